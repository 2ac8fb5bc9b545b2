"""Differential privacy: the run's ``[dp]`` settings (:mod:`.settings`), one sub-table per level
(record-level DP-SGD at each site, central node-level DP on the coordinator, distributed DP inside
SecAgg+ with the exact discrete Gaussian sampler: :mod:`.discrete_gaussian`, :mod:`.distributed`),
and how a round record's ``privacy`` field is read (:mod:`.epsilon`)."""
