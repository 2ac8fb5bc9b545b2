"""The node's SecAgg+ channel over its transport: `SecAggStep` long-polls, the masked upload."""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedhive.client.identity import NodeIdentity
from fedhive.client.transport import Transport
from fedhive.common.api.hooks import Block, contiguous
from fedhive.common.crypto.pki import verify_identity_cert
from fedhive.common.errors import PkiError, SecAggAbortedError, SecAggAuthError
from fedhive.common.secagg.keys import KeyAdvert
from fedhive.common.secagg.messages import (
    Adverts,
    AwaitUnmask,
    Pending,
    SealedShares,
    SecAggRequest,
    ShareKeys,
    UnmaskReply,
    UnmaskRequest,
)
from fedhive.common.wire.messages import NodeAuth


class TransportChannel:
    """A :class:`SecAggChannel` over the node's transport: ``SecAggStep`` calls, repeated while
    the coordinator answers ``Pending``, and the masked upload through ``PushUpdate`` (``upload``,
    which may be set after the key exchange started).

    Peers' identity keys arrive with their adverts and fill ``directory``; the node's own key,
    as relayed by the coordinator, must be the one this node holds.
    """

    def __init__(
        self,
        transport: Transport,
        auth: NodeAuth,
        round_: int,
        identity: NodeIdentity,
        upload: Callable[[Iterator[Block]], int] | None,
        words: int,
        *,
        wait_s: float,
        stopped: Callable[[], bool] = lambda: False,
    ) -> None:
        self.transport = transport
        self.auth = auth
        self.round = round_
        self.identity = identity
        self.upload = upload
        self.words = words
        self.wait_s = wait_s
        self.stopped = stopped
        self.directory: dict[str, Ed25519PublicKey] = {}
        self.sent = 0
        self.waited_s = 0.0  # in SecAggStep calls (the other nodes' pace and the barriers)
        self.upload_s = 0.0  # PushUpdate of the masked blocks

    def _call(self, body: KeyAdvert | ShareKeys | AwaitUnmask | UnmaskReply) -> Any:
        while True:
            if self.stopped():
                raise SecAggAbortedError("node stopping", node=self.auth.node_id)
            started = time.perf_counter()
            reply = self.transport.secagg_step(
                SecAggRequest(self.auth, self.round, self.wait_s, body)
            )
            self.waited_s += time.perf_counter() - started
            if reply.round != self.round:
                raise SecAggAbortedError(
                    f"secagg reply for round {reply.round}, expected {self.round}"
                )
            if not isinstance(reply.body, Pending):
                return reply.body

    def advertise(self, advert: KeyAdvert) -> list[KeyAdvert]:
        body = self._call(advert)
        if not isinstance(body, Adverts):
            raise SecAggAbortedError("the coordinator answered a key advert with something else")
        for a in body.adverts:
            self.directory[a.node] = self._peer_key(a.node, body)
        return list(body.adverts)

    def _peer_key(self, node: str, body: Adverts) -> Ed25519PublicKey:
        """A peer's identity key: under mutual TLS only as certified by this node's own copy of
        the consortium CA (the coordinator cannot substitute one); otherwise as relayed."""
        own = node == self.auth.node_id
        if self.identity.ca is not None:
            cert = body.certificates.get(node)
            if not cert:
                raise SecAggAuthError(
                    f"no identity certificate relayed for node {node!r}", node=node
                )
            if own and not hmac.compare_digest(cert, self.identity.cert):
                raise SecAggAuthError("the coordinator relayed another identity for this node")
            try:
                return verify_identity_cert(cert, self.identity.ca, node)
            except PkiError as exc:
                raise SecAggAuthError(f"node {node!r}: {exc}", node=node) from exc
        key = body.identities.get(node)
        if key is None:
            raise SecAggAuthError(f"no identity key relayed for node {node!r}", node=node)
        if own and not hmac.compare_digest(key, self.identity.public):
            raise SecAggAuthError("the coordinator relayed another identity key for this node")
        return Ed25519PublicKey.from_public_bytes(key)

    def share_keys(self, sealed: list[SealedShares]) -> list[SealedShares]:
        body = self._call(ShareKeys(tuple(sealed)))
        if not isinstance(body, ShareKeys):
            raise SecAggAbortedError("the coordinator answered shares with something else")
        return list(body.shares)

    def push_masked(self, blocks: Iterable[Block]) -> None:
        if self.upload is None:  # set once the update's metadata (the trailer) exists
            raise SecAggAbortedError("no upload set for the masked update")
        started = time.perf_counter()
        self.sent = self.upload(contiguous(blocks, self.words))
        self.upload_s += time.perf_counter() - started

    def await_unmask(self) -> UnmaskRequest:
        body = self._call(AwaitUnmask())
        if not isinstance(body, UnmaskRequest):
            raise SecAggAbortedError("the coordinator answered await-unmask with something else")
        return body

    def unmask(self, reply: UnmaskReply) -> None:
        self._call(reply)
