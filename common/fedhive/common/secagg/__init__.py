"""SecAgg+ (Bell et al. 2020 over Bonawitz et al. 2017), sans-I/O.

One concern per module: :mod:`.keys` (signed X25519 adverts, HKDF, AEAD), :mod:`.prg` (ChaCha20
masks into uint32), :mod:`.shamir` (t-of-m sharing over GF(2^130 - 5)), :mod:`.quantize`
(weighted stochastic quantization, overflow bound), :mod:`.graph` (neighbours, threshold),
:mod:`.messages`, and the two state machines :mod:`.node` and :mod:`.server`.
"""

from fedhive.common.secagg.graph import Graph
from fedhive.common.secagg.keys import KeyAdvert, RoundKeys
from fedhive.common.secagg.messages import SealedShares, UnmaskReply, UnmaskRequest
from fedhive.common.secagg.node import NodeSecAgg
from fedhive.common.secagg.quantize import QuantConfig, dequantize, quantize
from fedhive.common.secagg.server import ServerSecAgg

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
    "dequantize",
    "quantize",
]
