"""The switchboard between runs: a node call routed there just before a run started to be served
is told to retry (into that run), not that its session is over (a resumed run's node joined again
and its old session was waited out by the round as a silent node: 30 s per restart)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from fedhive.proto.v1 import coordinator_pb2 as pb
from fedhive.server.service.switchboard import PREFIX, Switchboard


class Aborted(Exception):
    pass


class Context:
    """The part of a grpc.ServicerContext the idle handlers use: abort raises."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        raise Aborted(details)


def a_servicer() -> Any:
    """What ``switch`` needs of a run's servicer: its methods (never called here)."""
    names = ("join", "pull_task", "push_update", "report_evaluation", "heartbeat", "leave")
    return SimpleNamespace(**{n: None for n in (*names, "decline_task", "secagg_step")})


@pytest.mark.parametrize(
    ("method", "request_bytes"),
    [
        ("Heartbeat", b""),
        ("PullTask", b""),
        ("Join", pb.JoinRequest(name="n0", run_id="r1").SerializeToString()),
    ],
)
def test_a_call_routed_between_runs_as_a_run_starts_is_told_to_retry(
    method: str, request_bytes: bytes
) -> None:
    # Prepare: no run served, none starting; a node call is routed (to the between-runs answer)
    board = Switchboard(starting=lambda: False)
    handler = board.service(SimpleNamespace(method=PREFIX + method))
    assert handler is not None
    context = Context()

    # Execute: a run is served before the call's handler runs
    board.switch(a_servicer())
    with pytest.raises(Aborted):
        if method == "PullTask":
            next(iter(handler.unary_stream(request_bytes, context)))
        else:
            handler.unary_unary(request_bytes, context)

    # Assert: retry shortly (UNAVAILABLE), not "session over" (UNAUTHENTICATED) / run unknown
    assert context.code == grpc.StatusCode.UNAVAILABLE


def test_between_runs_a_session_call_is_still_told_its_session_is_over() -> None:
    board = Switchboard(starting=lambda: False)
    handler = board.service(SimpleNamespace(method=PREFIX + "Heartbeat"))
    assert handler is not None
    context = Context()
    with pytest.raises(Aborted):
        handler.unary_unary(b"", context)
    assert context.code == grpc.StatusCode.UNAUTHENTICATED
