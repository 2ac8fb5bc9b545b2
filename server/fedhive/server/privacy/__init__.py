"""Coordinator-side differential privacy: central DP as a wrapper of the run's strategy
(:mod:`.central`), the noise source (:mod:`.noise`), the run's accountant and budget
(:mod:`.budget`), and the survivors' noise of distributed DP (:mod:`.distributed`)."""
