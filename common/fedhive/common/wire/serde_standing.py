"""Wire <-> domain types of the standing-node methods (AwaitRun, DeclineRun); every field bounded.

Beside :mod:`fedhive.common.wire.serde` (as :mod:`fedhive.common.wire.serde_secagg` is): the only
other place where these protobuf messages and fedhive's domain types meet.
"""

from __future__ import annotations

import math

from fedhive.common.errors import InvalidUpdateError
from fedhive.common.wire.messages import AwaitRunRequest, RunDecline, RunOffer
from fedhive.common.wire.serde import MAX_RUN_ID, bounded_text
from fedhive.proto.v1 import coordinator_pb2 as pb

MAX_NAME = 128
MAX_TASK_PATH = 256
MAX_APPROVED_TASKS = 64
MAX_REASON = 500


def _task_path(text: str) -> str:
    path = bounded_text(text, "task path", MAX_TASK_PATH)
    module, sep, attr = path.partition(":")
    if not sep or not module or not attr or " " in path:
        raise InvalidUpdateError(f"task path must look like 'package.module:factory': {path!r}")
    return path


def await_run_to_proto(req: AwaitRunRequest) -> pb.AwaitRunRequest:
    return pb.AwaitRunRequest(
        name=req.name,
        device=req.device,
        tasks=list(req.tasks),
        wait_s=req.wait_s,
        last_run_id=req.last_run_id,
    )


def await_run_from_proto(msg: pb.AwaitRunRequest) -> AwaitRunRequest:
    if len(msg.tasks) > MAX_APPROVED_TASKS:
        raise InvalidUpdateError(
            f"{len(msg.tasks)} approved tasks exceed the {MAX_APPROVED_TASKS} a node may list"
        )
    if not math.isfinite(msg.wait_s) or msg.wait_s < 0:
        raise InvalidUpdateError(f"AwaitRun wait_s must be finite and >= 0, got {msg.wait_s!r}")
    return AwaitRunRequest(
        name=bounded_text(msg.name, "name", MAX_NAME),
        device=bounded_text(msg.device, "device", MAX_NAME),
        tasks=tuple(_task_path(t) for t in msg.tasks),
        wait_s=msg.wait_s,
        last_run_id=bounded_text(msg.last_run_id, "last_run_id", MAX_RUN_ID),
    )


def run_offer_to_proto(offer: RunOffer) -> pb.RunOffer:
    return pb.RunOffer(run_id=offer.run_id, task=offer.task, retry_after_s=offer.retry_after_s)


def run_offer_from_proto(msg: pb.RunOffer) -> RunOffer:
    """(Node side: the coordinator's offer is bounded too.)"""
    retry = msg.retry_after_s
    if not math.isfinite(retry) or retry < 0:
        raise InvalidUpdateError(f"retry_after_s must be finite and >= 0, got {retry!r}")
    run_id = bounded_text(msg.run_id, "run_id", MAX_RUN_ID)
    return RunOffer(run_id, _task_path(msg.task) if run_id else "", retry)


def run_decline_to_proto(d: RunDecline) -> pb.DeclineRunRequest:
    return pb.DeclineRunRequest(name=d.name, run_id=d.run_id, task=d.task, reason=d.reason)


def run_decline_from_proto(msg: pb.DeclineRunRequest) -> RunDecline:
    run_id = bounded_text(msg.run_id, "run_id", MAX_RUN_ID)
    if not run_id:
        raise InvalidUpdateError("DeclineRun names no run")
    return RunDecline(
        name=bounded_text(msg.name, "name", MAX_NAME),
        run_id=run_id,
        task=bounded_text(msg.task, "task", MAX_TASK_PATH),
        reason=bounded_text(msg.reason.strip()[:MAX_REASON], "reason", MAX_REASON),
    )
