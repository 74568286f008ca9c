"""The training loop in parts: ``run`` (the entry, ``train``), ``build``, ``walk``, ``step``, ``records``."""
