"""CPU accelerators for stage 1: a BatchNorm-folded teacher and teacher FSP matrices stored on disk."""
