"""SecAggStep wire format: every body survives protobuf bytes; malformed sizes are refused."""

from __future__ import annotations

import numpy as np
import pytest

from fedhive.common.errors import InvalidUpdateError
from fedhive.common.secagg.messages import (
    Adverts,
    AwaitUnmask,
    Done,
    Pending,
    SecAggReply,
    SecAggRequest,
    ShareKeys,
)
from fedhive.common.wire import serde
from fedhive.common.wire import serde_secagg as S
from fedhive.common.wire.messages import JoinRequest, NodeAuth
from fedhive.proto.v1 import coordinator_pb2 as pb
from tests.unit.secagg.harness import federation, node_ids


def real_messages():
    """One message of every kind, from an actual 3-node round."""
    fed = federation(3, 10)
    srv = fed.server
    adverts = {u: fed.nodes[u].advertise() for u in node_ids(3)}
    for a in adverts.values():
        srv.receive_advert(a)
    to_nodes = srv.close_adverts()
    sealed = {u: fed.nodes[u].share_keys(to_nodes[u]) for u in node_ids(3)}
    for u, s in sealed.items():
        srv.receive_shares(u, s)
    routed = srv.close_shares()
    for u in node_ids(3):
        fed.nodes[u].receive_shares(routed[u])
        srv.masked_chunk(u, 0, fed.nodes[u].mask(0, np.zeros(10, dtype=np.uint32)))
        srv.masked_end(u)
    request = srv.close_masked()
    reply = fed.nodes[node_ids(3)[0]].unmask(request)
    return fed, adverts, to_nodes, sealed, routed, request, reply


AUTH = NodeAuth("node-00", b"t" * 32)


def through_bytes_request(req: SecAggRequest) -> SecAggRequest:
    raw = S.request_to_proto(req).SerializeToString()
    return S.request_from_proto(pb.SecAggRequest.FromString(raw))


def through_bytes_reply(rep: SecAggReply) -> SecAggReply:
    raw = S.reply_to_proto(rep).SerializeToString()
    return S.reply_from_proto(pb.SecAggReply.FromString(raw))


def test_every_request_body_round_trips() -> None:
    # Prepare
    _, adverts, _, sealed, _, _, reply = real_messages()
    bodies = [adverts["node-00"], ShareKeys(tuple(sealed["node-00"])), AwaitUnmask(), reply]
    # Execute
    back = [through_bytes_request(SecAggRequest(AUTH, 7, 2.5, b)) for b in bodies]
    # Assert
    assert [r.body for r in back] == bodies
    assert all(r.auth == AUTH and r.round == 7 and r.wait_s == 2.5 for r in back)


def test_every_reply_body_round_trips() -> None:
    # Prepare
    _, _, to_nodes, _, routed, request, _ = real_messages()
    identities = {a.node: b"k" * 32 for a in to_nodes["node-00"]}
    bodies = [
        Adverts(tuple(to_nodes["node-00"]), identities),
        ShareKeys(tuple(routed["node-00"])),
        request,
        Done(),
        Pending(1.5),
    ]
    # Execute
    back = [through_bytes_reply(SecAggReply(7, b)) for b in bodies]
    # Assert
    assert [r.body for r in back] == bodies


def test_short_key_in_an_advert_is_refused_naming_the_field() -> None:
    msg = S.advert_to_proto(real_messages()[1]["node-01"])
    msg.s_pk = b"\x01" * 31
    wire = pb.SecAggRequest(auth=serde.auth_to_proto(AUTH), round=7, advert=msg)
    with pytest.raises(InvalidUpdateError, match="s_pk: 31 bytes, expected 32"):
        S.request_from_proto(wire)


def test_unknown_share_kind_is_refused() -> None:
    bad = pb.SecAggRevealedShare(owner="node-01", kind=pb.SECAGG_SHARE_KIND_UNSPECIFIED)
    wire = pb.SecAggRequest(auth=serde.auth_to_proto(AUTH), unmask=pb.SecAggUnmask(shares=[bad]))
    with pytest.raises(InvalidUpdateError, match="unknown kind"):
        S.request_from_proto(wire)


@pytest.mark.parametrize(
    "parse, msg",
    [(S.request_from_proto, pb.SecAggRequest()), (S.reply_from_proto, pb.SecAggReply())],
)
def test_message_without_a_body_is_refused(parse, msg) -> None:
    with pytest.raises(InvalidUpdateError, match="without a body"):
        parse(msg)


def test_join_request_carries_the_identity_key() -> None:
    req = JoinRequest("site-a", "cpu", 10, identity_key=b"\x07" * 32)
    assert serde.join_request_from_proto(serde.join_request_to_proto(req)) == req
    with pytest.raises(InvalidUpdateError, match="identity key must be 32 bytes"):
        serde.join_request_from_proto(pb.JoinRequest(name="x", identity_key=b"\x07" * 5))
