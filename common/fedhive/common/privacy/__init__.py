"""Differential privacy: the run's ``[dp]`` settings (:mod:`.settings`), one sub-table per level,
and one module per level: record-level DP-SGD at each site (:mod:`.sgd`: the settings that travel
to nodes, the node's ledger of its own budget, Opacus in the shared training loop), central
node-level DP on the coordinator (:mod:`.central`), distributed DP inside SecAgg+ with the exact
discrete Gaussian sampler (:mod:`.discrete_gaussian`, :mod:`.distributed`); the accountant
(:mod:`.rdp`, Opacus's RDP analysis) and how a round record's ``privacy`` is read
(:mod:`.epsilon`). Opacus is the optional extra ``fedhive[dp]``, imported only when DP is used.
"""
