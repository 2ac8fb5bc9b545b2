"""A standing node: connected once, it takes part in run after run.

::

    AwaitRun (long poll, also its heartbeat) -> offered run R with task T
      T approved in this site's config ([tasks."T"]: data folder, arguments)?
        no  -> DeclineRun(R, reason)                  the run's record shows why; T never imported
        yes -> a Node for T with that data joins R    (JoinRequest.run_id = R), serves its rounds
               until R finishes or is over            then back to AwaitRun

The coordinator names a task by import path; this node imports only a path its own
configuration lists. An unreachable coordinator: backoff with jitter, as a one-shot node; a
refused identity: stop with the reason. :meth:`StandingNode.stop` (SIGTERM) leaves the run under
way cleanly and ends the loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from fedhive.client.backoff import Backoff
from fedhive.client.device import resolve_device
from fedhive.client.node import Node, NodeStats
from fedhive.client.transport import Transport
from fedhive.common.config import ApprovedTask, ClientConfig
from fedhive.common.errors import (
    AccessDeniedError,
    FedhiveError,
    RequestRefused,
    TransportError,
)
from fedhive.common.wire.messages import AwaitRunRequest, RunDecline, RunOffer

log = logging.getLogger("fedhive.client")

NodeFactory = Callable[[ClientConfig, str], Node]


def run_config(config: ClientConfig, task: str, approved: ApprovedTask) -> ClientConfig:
    """This node's configuration for one run of an approved task."""
    return config.model_copy(
        update={
            "task": task,
            "data_dir": approved.data_dir,
            "task_args": dict(approved.task_args),
            "seed": config.seed if approved.seed is None else approved.seed,
            "tasks": {},
            "flower_app": None,
        }
    )


class StandingNode:
    def __init__(self, config: ClientConfig, transport: Transport, make_node: NodeFactory) -> None:
        self.config = config
        self.transport = transport
        self.make_node = make_node
        self.device = resolve_device(config.device)
        self.stop_event = threading.Event()
        self.stats = NodeStats()
        self.runs: list[str] = []  # the runs taken part in
        self.declined: list[str] = []
        self._lock = threading.RLock()  # stop() runs in a signal handler on the main thread
        self._node: Node | None = None
        self._backoff = Backoff(config, self.stop_event)

    def stop(self) -> None:
        self.stop_event.set()
        with self._lock:
            node = self._node
        if node is not None:
            node.stop()
        self.transport.cancel()

    def run(self) -> NodeStats:
        last = ""
        log.info(
            "standing node %s: waiting for runs of %d approved task(s): %s",
            self.config.name,
            len(self.config.tasks),
            ", ".join(sorted(self.config.tasks)),
        )
        while not self.stop_event.is_set():
            request = AwaitRunRequest(
                self.config.name,
                self.device,
                tuple(sorted(self.config.tasks)),
                self.config.poll_wait_s,
                last,
            )
            try:
                offer = self.transport.await_run(request)
            except AccessDeniedError:
                raise
            except TransportError as exc:
                if self.stop_event.is_set():
                    break
                log.warning("cannot reach the coordinator (%s); retrying", exc)
                self._backoff.wait()
                continue
            except RequestRefused as exc:
                log.error("the coordinator refused this node's wait: %s", exc)
                self._backoff.wait()
                continue
            self._backoff.reset()
            if not offer.run_id:
                if offer.retry_after_s > 0:
                    self.stop_event.wait(min(offer.retry_after_s, self.config.backoff_max_s))
                continue
            last = offer.run_id
            self._serve(offer)
        return self.stats

    def _decline(self, offer: RunOffer, reason: str) -> None:
        self.declined.append(offer.run_id)
        log.warning("declining run %s (task %s): %s", offer.run_id, offer.task, reason)
        try:
            self.transport.decline_run(
                RunDecline(self.config.name, offer.run_id, offer.task, reason[:500])
            )
        except FedhiveError as exc:
            log.warning("could not decline run %s: %s", offer.run_id, exc)

    def _serve(self, offer: RunOffer) -> None:
        approved = self.config.tasks.get(offer.task)
        if approved is None:  # decided before anything is imported
            self._decline(
                offer,
                f"task {offer.task} is not approved by this site (approved: "
                f"{', '.join(sorted(self.config.tasks))})",
            )
            return
        try:
            node = self.make_node(run_config(self.config, offer.task, approved), offer.run_id)
        except FedhiveError as exc:  # e.g. its data folder is missing
            self._decline(offer, f"cannot load task {offer.task}: {exc}")
            return
        with self._lock:
            self._node = node
        if self.stop_event.is_set():
            node.stop()
        log.info("taking part in run %s (task %s)", offer.run_id, offer.task)
        try:
            stats = node.run()
        finally:
            with self._lock:
                self._node = None
        self.runs.append(offer.run_id)
        self.stats.rounds_trained += stats.rounds_trained
        self.stats.evaluations += stats.evaluations
        self.stats.bytes_down += stats.bytes_down
        self.stats.bytes_up += stats.bytes_up
        self.stats.refusals += stats.refusals
        log.info(
            "run %s done here (%d round(s) trained); waiting for the next run",
            offer.run_id,
            stats.rounds_trained,
        )
