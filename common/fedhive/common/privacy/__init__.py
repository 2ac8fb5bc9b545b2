"""Differential privacy: the run's ``[dp]`` settings (:mod:`.settings`), one sub-table per level
(record-level DP-SGD at each site, central node-level DP on the coordinator, distributed DP inside
SecAgg+), and how a round record's ``privacy`` field is read (:mod:`.epsilon`)."""
