"""The library core: FSP matrices and loss (Eq. 1, Eq. 2), feature taps, run settings, checkpoints, atomic writes."""
