"""Coordinator-side differential privacy: central DP as a wrapper of the run's strategy
(:mod:`.central`), the noise source (:mod:`.noise`) and the run's accountant and budget
(:mod:`.budget`)."""
