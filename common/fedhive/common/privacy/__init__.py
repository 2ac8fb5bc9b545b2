"""Differential privacy: settings, the exact discrete Gaussian sampler, the mechanisms and their
accounting (:mod:`.settings`, :mod:`.discrete_gaussian`, :mod:`.distributed`)."""
