"""The coordinator as a service: one gRPC port, a queue of runs run one after another.

::

    STATE_DIR/service.sqlite        the queue of runs and the audit table (service.queue)
    STATE_DIR/runs/<run_id>/        each run's directory, exactly as a one-shot run's

The driver (:meth:`Service.serve`) takes the next run from the queue (the one still ``running``
after a restart first: it resumes from its directory), builds its coordinator, routes the node
calls to it (:mod:`~fedhive.server.service.switchboard`) and runs it; then the next. A run can be
cancelled while queued and stopped while running (it ends ``stopped``; the queue goes on).
:meth:`Service.stop` (SIGTERM) stops the running run resumably: it stays ``running`` and the
next start resumes it. The one-shot ``fedhive server`` is a service with one run, in memory,
whose run directory is ``--run-dir``; it exits when that run ends.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedhive.common.config import ServerConfig
from fedhive.common.errors import FedhiveError, RunStateError
from fedhive.common.record import RoundRecord
from fedhive.common.runtime.memory import startup_gc
from fedhive.server.app import (
    _LIVE,
    listen,
    make_server,
    prepare_run,
    serve_health,
)
from fedhive.server.coordinator import (
    BudgetSpent,
    Coordinator,
    RoundListener,
    RunAborted,
    RunStopped,
)
from fedhive.server.identity import AdminGate, PeerGate, server_tls
from fedhive.server.limits import Watchdog
from fedhive.server.service.control import ControlServicer
from fedhive.server.service.lobby import Lobby
from fedhive.server.service.queue import (
    ABORTED,
    FAILED,
    FINISHED,
    QUEUED,
    RUNNING,
    STOPPED,
    RunEntry,
    RunQueue,
    Submission,
)
from fedhive.server.service.settings import check_settings, compose, run_fields
from fedhive.server.service.switchboard import Switchboard
from fedhive.server.servicer import CoordinatorServicer

log = logging.getLogger("fedhive.server.service")
RUNS = "runs"  # STATE_DIR/runs/<run_id>/: each run's directory, exactly as a one-shot run's

IDLE_WAIT_S = 1.0  # an idle driver looks at the queue at least this often
STOP_WAIT_S = 10.0  # an administrator's stop waits this long for the run to end
QUEUE_FILE = "service.sqlite"
ListenerFactory = Callable[[ServerConfig], RoundListener | None]


@dataclass
class Current:
    entry: RunEntry
    coordinator: Coordinator

    @property
    def run_id(self) -> str:
        """The id nodes know the run by (the run directory's: a one-shot run resumed from its
        directory keeps its first id; a queued run's is its queue id)."""
        return self.coordinator.run_id


class Service:
    def __init__(
        self,
        base: ServerConfig,
        state_dir: Path | None,
        *,
        listener: ListenerFactory | None = None,
        exit_when_idle: bool = False,
        freeze_startup: bool = False,
    ) -> None:
        self.base = base
        self.state_dir = state_dir
        self.queue = RunQueue(state_dir / QUEUE_FILE if state_dir is not None else None)
        self.listener = listener
        self.exit_when_idle = exit_when_idle
        self.freeze_startup = freeze_startup  # a one-shot command: see memory.startup_gc
        self.tls = server_tls(base)
        # every node call outside a run (the lobby's, the refusals between runs) passes this
        # gate: CA, CRL, node certificate, the service's allow-list (a one-shot's: its run's)
        self.gate = PeerGate.from_config(base, self.tls) if self.tls is not None else None
        self.lobby = Lobby(self, self.gate)
        self.switchboard = Switchboard(self.lobby.handlers(), self._live, self._starting, self.gate)
        self.server = make_server(base)
        self.server.add_generic_rpc_handlers((self.switchboard,))
        self.health = serve_health(self.server)
        admin_gate = AdminGate.from_tls(self.tls) if self.tls is not None else None
        self.control = ControlServicer(self, admin_gate)
        self.server.add_generic_rpc_handlers((self.control.handler(),))
        self.watchdog = Watchdog()
        self.status: Any = None  # the status page and /metrics ([status]; off by default)
        if base.status is not None:
            from fedhive.server.status import status_part
            from fedhive.server.status.runs import RunDirs

            runs = RunDirs.under(state_dir / RUNS) if state_dir is not None else None
            self.status = status_part(base, runs)
            self.status.names = self.queue.names  # the page shows a named run's name
        self.port = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._current: Current | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> int:
        self.port = listen(self.server, self.base, self.tls)
        self.server.start()
        self.watchdog.start()
        if self.status is not None:
            try:
                self.status.start(None, self._queue_length())
            except BaseException:
                self.stop(0)
                raise
        if self.tls is None:
            log.warning(
                "INSECURE MODE: the control plane (submit, stop, list runs and nodes) answers "
                "anyone who reaches port %d, unauthenticated; local use only",
                self.port,
            )
        _LIVE[id(self)] = self  # type: ignore[assignment]  # stopped at interpreter exit
        log.info(
            "coordinator service listening on port %d with %s (state %s)",
            self.port,
            "plain text" if self.tls is None else f"mutual TLS (CA {self.tls.ca})",
            self.state_dir or "in memory",
        )
        return self.port

    def stop(self, grace: float = 2.0) -> None:
        """Stop serving: the running run stops resumably (it stays ``running``)."""
        _LIVE.pop(id(self), None)
        self._stopping.set()
        with self._lock:
            current = self._current
        if current is not None:
            current.coordinator.stop()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.watchdog.stop()
        if self.status is not None:
            self.status.stop()
        self.lobby.close()

    def _queue_length(self) -> int:
        """Runs waiting or running (the metrics' queue length)."""
        return self.queue.queued() + (1 if self.queue.running() is not None else 0)

    def request_stop(self) -> None:
        """SIGTERM: end the driver loop (the running run stops resumably)."""
        self._stopping.set()
        with self._lock:
            current = self._current
        if current is not None:
            current.coordinator.stop()

    def _live(self, run_id: str) -> bool:
        try:
            return self.queue.get(run_id).state in (QUEUED, RUNNING)
        except FedhiveError:
            return False

    def _starting(self) -> bool:
        """A run is ``running`` in the queue but not served yet (being started or resumed; the
        switchboard, not ``_current``, says whether it is served: ``_current`` is set first)."""
        if self.switchboard.servicer is not None:
            return False
        return self.queue.running() is not None

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # ------------------------------------------------------------------ runs

    def run_dir(self, entry: RunEntry) -> Path:
        if self.state_dir is None:
            return self.base.run_dir
        return self.state_dir / RUNS / entry.run_id

    def submit(self, settings: Mapping[str, Any], caller: str) -> RunEntry:
        entry = self.queue.submit(check_settings(self.base, settings), caller)
        log.info("run %s (%s) queued by %s", entry.run_id, entry.task, caller)
        return entry

    def submit_once(self, settings: Mapping[str, Any], caller: str, name: str) -> Submission:
        """Queue the run named ``name`` unless a run has that name (see RunQueue.submit_once)."""
        done = self.queue.submit_once(check_settings(self.base, settings), caller, name)
        entry = done.entry
        if done.existed:
            log.info(
                "run %s (%s) already submitted as %s: not again", name, entry.state, entry.run_id
            )
        else:
            log.info("run %s (%s, %s) queued by %s", entry.run_id, name, entry.task, caller)
        return done

    def current(self) -> Current | None:
        with self._lock:
            return self._current

    def cancel(self, run_id: str, caller: str, reason: str = "") -> RunEntry:
        """An administrator cancels a queued run, or stops the running one: it ends ``stopped``
        with "stopped by administrator NAME" (or ``finished``, if it was already winding down).
        Returns the run once it has ended (or, after STOP_WAIT_S, as it is)."""
        entry = self.queue.get(run_id)
        if entry.state == QUEUED:
            return self.queue.cancel(run_id, by_administrator("cancelled", caller, reason))
        if entry.state != RUNNING:
            raise RunStateError(f"run {run_id} is {entry.state}: it cannot be stopped")
        why = by_administrator("stopped", caller, reason)
        self.queue.request_stop(run_id, why)  # durable: a restart (or its start) stops it too
        with self._lock:
            current = self._current
        if current is not None and current.entry.run_id == run_id:
            current.coordinator.stop(why)
        return self.queue.wait_ended(run_id, STOP_WAIT_S)

    def serve(self) -> None:
        """Run the queue's runs one after another until stopped (or, ``exit_when_idle``, until
        the queue is empty)."""
        while not self._stopping.is_set():
            entry = self.queue.next()
            if entry is None:
                if self.exit_when_idle:
                    return
                self.queue.wait_change(IDLE_WAIT_S)
                continue
            try:
                self.run_entry(entry)
            except Exception as exc:  # recorded in the queue and logged; the queue goes on
                log.debug("run %s ended: %s", entry.run_id, exc)

    def run_entry(self, entry: RunEntry) -> list[RoundRecord]:
        """Run one queue entry to its end; raises as the coordinator does (RunStopped when the
        service stops; BudgetSpent, recorded as finished; RunAborted; a FedhiveError when it cannot
        start)."""
        run_id = entry.run_id
        try:
            config = compose(self.base, entry.settings, self.run_dir(entry))
            gate = PeerGate.from_config(config, self.tls) if self.tls is not None else None
            listener = self.listener(config) if self.listener is not None else None
            if self.status is not None:  # the metrics listen beside the run's own listener
                listener = self.status.listener(listener)
            with startup_gc() if self.freeze_startup else contextlib.nullcontext():
                coordinator = prepare_run(config, listener, run_id=run_id, gate=gate)
        except Exception as exc:
            self.queue.end(run_id, FAILED, f"cannot start: {exc}")
            log.error("run %s cannot start: %s", run_id, exc)
            raise
        with self._lock:
            self._current = Current(entry, coordinator)
        requested = self.queue.get(run_id).reason
        if requested:  # an administrator's stop, requested before a restart or while starting
            coordinator.stop(requested)
        if self._stopping.is_set():
            coordinator.stop()
        self.switchboard.switch(CoordinatorServicer(coordinator, gate, self.watchdog))
        if self.status is not None:
            self.status.attach(coordinator)
            self.status.metrics.set_queue_length(self._queue_length())
        self.lobby.wake()
        log.info(
            "run %s (%s, %d round(s), %d tensors, %.1f MB) started, run dir %s",
            coordinator.run_id,
            config.task,
            config.rounds,
            len(coordinator.specs),
            coordinator.model_bytes / 1e6,
            config.run_dir,
        )
        try:
            history = coordinator.run()
        except RunStopped:
            requested = self.queue.get(run_id).reason
            if requested:  # an administrator's stop (else SIGTERM: it resumes on restart)
                self.queue.end(run_id, STOPPED, requested)
            raise
        except BudgetSpent as exc:  # the end its privacy budget sets: the run is done
            self.queue.end(run_id, FINISHED, str(exc))
            raise
        except RunAborted as exc:
            self.queue.end(run_id, ABORTED, str(exc))
            raise
        except Exception as exc:
            self.queue.end(run_id, FAILED, f"{type(exc).__name__}: {exc}")
            log.exception("run %s failed", run_id)
            raise
        finally:
            self.switchboard.switch(None)
            if self.status is not None:
                self.status.attach(None)
            with self._lock:
                self._current = None
            coordinator.store.close()
            self.lobby.wake()
        self.queue.end(run_id, FINISHED)
        log.info("run %s finished", run_id)
        return history


def by_administrator(what: str, caller: str, reason: str) -> str:
    """ "stopped by administrator alice: enough" (``caller``: the control plane's identity)."""
    name = caller.removeprefix("admin:")
    return f"{what} by administrator {name}" + (f": {reason}" if reason else "")


def one_shot(
    config: ServerConfig, listener: RoundListener | None = None, *, freeze_startup: bool = False
) -> Service:
    """The service of today's ``fedhive server``: one run, in memory, in ``config.run_dir``."""
    service = Service(
        config,
        None,
        listener=lambda _: listener,
        exit_when_idle=True,
        freeze_startup=freeze_startup,
    )
    service.queue.submit(run_fields(config), "command line")
    # running from the start: until the coordinator serves it, node calls are told to retry
    # shortly (a restart's nodes come back to the run it resumes), not that their session is over
    service.queue.next()
    return service
