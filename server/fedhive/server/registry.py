"""The node registry: who joined, under which identity and token, and who is still alive.

:class:`NodeRegistry` checks a join (name, protocol, declared examples, the secure-aggregation
identity), registers the node (forgetting expired ones first, refusing one over the cap),
authenticates every later call (token and, under mutual TLS, the same verified peer identity),
and tracks liveness (heartbeats, leave, eviction). On resume it restores the nodes the run store
knows, as not yet alive. Imports no grpc.

Not locked by itself: its owner (the coordinator) calls every method but :meth:`check_join`
under its own lock, the one that also guards the open round.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass

from fedhive.common.config import ServerConfig
from fedhive.common.errors import (
    AccessDeniedError,
    InvalidUpdateError,
    LimitExceededError,
    PkiError,
    UnknownNodeError,
)
from fedhive.common.wire.messages import JoinRequest, NodeAuth
from fedhive.server import waiting
from fedhive.server.limits import make_room
from fedhive.server.store import ResumePoint, RunStore

log = logging.getLogger("fedhive.server")

MAX_NAME_CHARS = 128
PROTOCOL_VERSION = 1
TOKEN_BYTES = 32


@dataclass
class NodeRecord:
    node_id: str
    name: str
    device: str
    num_examples: int
    token_sha256: bytes
    last_seen: float
    alive: bool = True
    finished: bool = False
    peer_id: str | None = None
    identity_key: bytes = b""  # Ed25519 public key, for secure aggregation
    identity_cert: bytes = b""  # its CA certificate (DER), verified at join (mutual TLS)


@dataclass(frozen=True)
class Identity:
    """A joining node's secure-aggregation identity as it may be relayed (empty: none)."""

    key: bytes = b""
    cert: bytes = b""


class NodeRegistry:
    def __init__(
        self,
        config: ServerConfig,
        store: RunStore,
        *,
        resume: ResumePoint | None = None,
        identity_verifier: Callable[[bytes, str], bytes] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        # (identity certificate DER, node id) -> its raw Ed25519 key; raises PkiError
        self.identity_verifier = identity_verifier
        self._nodes: dict[str, NodeRecord] = {}
        self._next_node = resume.next_node_seq if resume else 0
        if resume is not None:
            identities = store.node_identities()
            for node_id, name, token_sha256 in store.nodes():
                identity = self._restored_identity(node_id, *identities.get(node_id, (b"", b"")))
                self._nodes[node_id] = NodeRecord(
                    node_id,
                    name,
                    "?",
                    config.max_node_examples,  # its declaration is lost: the policy's cap
                    token_sha256,
                    time.monotonic(),
                    alive=False,
                    # under mutual TLS a node's id is its certificate name
                    peer_id=None if config.insecure else node_id,
                    identity_key=identity.key,
                    identity_cert=identity.cert,
                )

    def _restored_identity(self, node_id: str, key: bytes, cert: bytes) -> Identity:
        """A stored node's secure-aggregation identity, as a resumed coordinator relays it: a
        node that survived the restart reconnects with its token and never joins again. Under
        mutual TLS its certificate is checked again (CA, name) and the key taken from it."""
        if self.config.insecure or self.identity_verifier is None or not cert:
            return Identity(key, b"") if self.config.insecure else Identity()
        try:
            return Identity(self.identity_verifier(cert, node_id), cert)
        except PkiError as exc:
            log.warning(
                "node %s: its stored identity is refused (%s); it must join again", node_id, exc
            )
            return Identity()

    # ------------------------------------------------------------------ lookups

    def get(self, node_id: str) -> NodeRecord | None:
        return self._nodes.get(node_id)

    def __getitem__(self, node_id: str) -> NodeRecord:
        return self._nodes[node_id]

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def __iter__(self) -> Iterator[NodeRecord]:
        return iter(self._nodes.values())

    def snapshot(self) -> dict[str, NodeRecord]:
        """A copy of every record, by node id (changing it changes nothing here)."""
        return {nid: dataclasses.replace(node) for nid, node in self._nodes.items()}

    # ------------------------------------------------------------------ join

    def check_join(self, req: JoinRequest, peer_id: str | None) -> Identity:
        """Refuse a bad join request; the node's identity as it may be relayed. Needs no lock."""
        if not req.name or len(req.name) > MAX_NAME_CHARS:
            raise InvalidUpdateError(f"node name must be 1-{MAX_NAME_CHARS} characters")
        if req.protocol_version != PROTOCOL_VERSION:
            raise InvalidUpdateError(
                f"protocol version {req.protocol_version} is not supported ({PROTOCOL_VERSION})"
            )
        cap = self.config.max_node_examples
        if req.num_examples > cap:
            raise LimitExceededError(
                f"node {req.name!r} declares {req.num_examples} examples; this coordinator "
                f"accepts at most {cap} per node (max_node_examples)"
            )
        return self._identity(req, peer_id)

    def _identity(self, req: JoinRequest, peer_id: str | None) -> Identity:
        """The node's secure-aggregation identity key (and certificate) as it may be relayed.

        Under mutual TLS only a key certified by the consortium CA for this very node counts:
        a bad certificate refuses the join; none leaves the node out of secure rounds. Without
        TLS the key is taken as sent (trust on first use)."""
        if peer_id is None or self.identity_verifier is None:
            return Identity(req.identity_key)
        if not req.identity_cert:
            if req.identity_key:
                log.warning(
                    "node %s sent an identity key without its certificate: it cannot take part "
                    "in secure aggregation (issue one with `fedhive certs node`)",
                    peer_id,
                )
            return Identity()
        try:
            key = self.identity_verifier(req.identity_cert, peer_id)
        except PkiError as exc:
            log.warning("refused node %s: %s", peer_id, exc)
            raise AccessDeniedError(f"secure-aggregation identity refused: {exc}") from exc
        if req.identity_key and not hmac.compare_digest(key, req.identity_key):
            log.warning("refused node %s: identity key and certificate differ", peer_id)
            raise AccessDeniedError(
                "secure-aggregation identity refused: the identity key is not the one its "
                "certificate names"
            )
        return Identity(key, req.identity_cert)

    def register(
        self,
        req: JoinRequest,
        peer_id: str | None,
        identity: Identity,
        busy: Collection[str],
    ) -> tuple[NodeAuth, bool]:
        """Register a checked join (``busy``: ids the open round still expects, never forgotten
        to make room); its credentials, and whether the node had joined before."""
        cfg = self.config
        make_room(
            self._nodes,
            cfg.max_registered_nodes,
            max(cfg.node_expiry_s, cfg.heartbeat_timeout_s),
            busy,
            peer_id,
        )
        if peer_id is not None:
            known = self._nodes.get(peer_id)
            if known is not None and known.identity_key and identity.key != known.identity_key:
                log.warning("refused node %s: another identity key than its first", peer_id)
                raise AccessDeniedError(
                    f"secure-aggregation identity refused: node {peer_id!r} joined this run with "
                    "another identity key; a node keeps its key for the whole run"
                )
        self._next_node += 1
        node_id = peer_id if peer_id is not None else f"{req.name}-{self._next_node}"
        again = node_id in self._nodes
        token = secrets.token_bytes(TOKEN_BYTES)
        digest = hashlib.sha256(token).digest()
        self.store.add_node(node_id, req.name, token, self._next_node, identity.key, identity.cert)
        self._nodes[node_id] = NodeRecord(
            node_id,
            peer_id or req.name,
            req.device,
            req.num_examples,
            digest,
            time.monotonic(),
            peer_id=peer_id,
            identity_key=identity.key,
            identity_cert=identity.cert,
        )
        return NodeAuth(node_id, token), again

    # ------------------------------------------------------------------ later calls

    def auth(self, auth: NodeAuth, peer_id: str | None = None) -> NodeRecord:
        """The caller's record: its token must match, and its verified identity be the one it
        joined with. Counts as a sign of life."""
        node = self._nodes.get(auth.node_id)
        given = hashlib.sha256(auth.token).digest()
        if node is None or not hmac.compare_digest(node.token_sha256, given):
            raise UnknownNodeError(
                f"unknown node {auth.node_id!r} or wrong token (not joined, or the coordinator "
                "restarted): join again"
            )
        if node.peer_id != peer_id:
            log.warning("refused peer %s: it presented the token of node %s", peer_id, node.node_id)
            raise AccessDeniedError(
                f"the certificate of {peer_id!r} cannot act for node {node.node_id!r}"
            )
        node.last_seen = time.monotonic()
        if not node.alive:
            node.alive = True
            log.info("node %s is back", node.node_id)
        return node

    @staticmethod
    def leave(node: NodeRecord) -> None:
        node.alive = False
        node.finished = True

    def evict(self, peer_id: str) -> bool:
        """Remove the node of this identity from the run; False when there is none to remove."""
        node = self._nodes.get(peer_id)
        if node is None or node.peer_id != peer_id or node.finished:
            return False
        self.leave(node)
        return True

    # ------------------------------------------------------------------ liveness

    def alive(self) -> list[NodeRecord]:
        """The nodes that may take part now (a node silent past the heartbeat timeout is
        marked gone here)."""
        now = time.monotonic()
        out = []
        for node in self._nodes.values():
            if node.alive and now - node.last_seen > self.config.heartbeat_timeout_s:
                node.alive = False
                log.warning("node %s missed its heartbeats; considered gone", node.node_id)
            if node.alive and not node.finished:
                out.append(node)
        return out

    def silent(self, ids: Iterable[str], now: float) -> list[str]:
        """Those of ``ids`` unknown, gone or silent past the heartbeat timeout (marked gone)."""
        out = []
        for nid in ids:
            node = self._nodes.get(nid)
            if (
                node is None
                or not node.alive
                or now - node.last_seen > self.config.heartbeat_timeout_s
            ):
                if node is not None:
                    node.alive = False
                out.append(nid)
        return out

    def all_left(self) -> list[str]:
        """Every node of the run, when each one has left it (Leave, eviction, a FINISH) and none
        is merely disconnected (that one may come back); else an empty list."""
        nodes = list(self._nodes.values())
        if not nodes or any(not n.finished for n in nodes):
            return []
        return sorted(n.node_id for n in nodes)

    def any_active(self) -> bool:
        """Whether any node is still alive and not yet told the run is over."""
        return any(n.alive and not n.finished for n in self._nodes.values())

    def known(self) -> list[waiting.Known]:
        """Every node as the waiting log names it."""
        alive = {n.node_id for n in self.alive()}
        return [waiting.Known(n.node_id, n.node_id in alive, n.finished) for n in self]
