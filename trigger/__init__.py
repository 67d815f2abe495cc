"""The software missing-energy trigger: numba kernels, configuration, workers."""
