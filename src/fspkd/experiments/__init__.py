"""The lab notebook: the demo, the study, the paper's tables and their reproduction, the benchmark, reports."""
