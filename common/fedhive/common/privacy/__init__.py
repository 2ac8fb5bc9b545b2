"""Differential privacy: settings, accountants and mechanisms (one module per level).

:mod:`.settings` holds the run's ``[dp]`` table; :mod:`.rdp` the project's accountant (Opacus's
RDP analysis); :mod:`.sgd` record-level DP-SGD at each site (the settings that travel to nodes,
the node's ledger of its own budget, Opacus's per-sample clipping and noise in the shared
training loop). Opacus is the optional extra ``fedhive[dp]``: it is imported when DP is used.
"""
