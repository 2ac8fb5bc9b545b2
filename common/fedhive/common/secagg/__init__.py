"""SecAgg+ (Bell et al. 2020 over Bonawitz et al. 2017), sans-I/O.

One concern per module: :mod:`.keys` (signed X25519 adverts, HKDF, AEAD), :mod:`.prg` (ChaCha20
masks into uint32), :mod:`.shamir` (t-of-m sharing over GF(2^130 - 5)), :mod:`.quantize`
(weighted stochastic quantization, overflow bound), :mod:`.graph` (neighbours, threshold),
:mod:`.messages`, and the two state machines :mod:`.node` and :mod:`.server`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from fedhive.common.secagg.graph import Graph
    from fedhive.common.secagg.keys import KeyAdvert, RoundKeys
    from fedhive.common.secagg.messages import SealedShares, UnmaskReply, UnmaskRequest
    from fedhive.common.secagg.node import NodeSecAgg
    from fedhive.common.secagg.quantize import QuantConfig
    from fedhive.common.secagg.server import ServerSecAgg

# Lazy: importing the settings (fedhive.common.config -> .quantize) must not pull in the crypto.
_WHERE = {
    "Graph": "graph",
    "KeyAdvert": "keys",
    "RoundKeys": "keys",
    "SealedShares": "messages",
    "UnmaskReply": "messages",
    "UnmaskRequest": "messages",
    "NodeSecAgg": "node",
    "QuantConfig": "quantize",
    "ServerSecAgg": "server",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


__all__ = [
    "Graph",
    "KeyAdvert",
    "NodeSecAgg",
    "QuantConfig",
    "RoundKeys",
    "SealedShares",
    "ServerSecAgg",
    "UnmaskReply",
    "UnmaskRequest",
]
