"""Coordinator-side differential privacy: central DP as a wrapper of the run's strategy
(:mod:`.central`), the noise source (:mod:`.noise`), the run's accountant and budget
(:mod:`.budget`), the survivors' noise of distributed DP (:mod:`.distributed`), and the sites'
DP-SGD settings and epsilon claims (:mod:`.sgd`)."""
