"""The node runtime: join -> (pull -> evaluate -> train -> push)* -> leave.

The model is built once and lives for the node's lifetime; each round's global model is staged
in CPU buffers, checked (order, sizes, finite values, digest) and only then copied into the live
model, so a broken download never corrupts it. :class:`Node` drives the loop; its
:class:`~fedhive.client.session.Session` joins, beats and backs off (unreachable coordinator:
exponential backoff with jitter; coordinator restarted: join again), its
:class:`~fedhive.client.secure_round.SecureRounds` runs the secure rounds' key exchange and
masked push. SIGTERM: leave cleanly. The coordinator refusing this node's identity (revoked
certificate, not on its allow-list): stop with the reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from fedhive.client.device import gpu_peak, resolve_device
from fedhive.client.download import ModelDownload
from fedhive.client.identity import load_node_identity
from fedhive.client.pipeline import flat_values, through_stages
from fedhive.client.privacy import sgd as dp_sgd
from fedhive.client.secagg import KeyExchange, SecureTask
from fedhive.client.secure_round import SecureRounds
from fedhive.client.session import Session
from fedhive.client.transport import Transport
from fedhive.client.upload import update_messages
from fedhive.common.api.pipeline import load_stages
from fedhive.common.api.task import Task, TaskContext, exchanged_state, load_task
from fedhive.common.config import ClientConfig
from fedhive.common.errors import (
    AccessDeniedError,
    ConfigError,
    InvalidUpdateError,
    PrivacyBudgetExceeded,
    RequestRefused,
    SecAggError,
    TaskError,
    TransportError,
    UnknownNodeError,
    UnknownRunError,
)
from fedhive.common.wire.messages import (
    EvaluationReport,
    JoinReply,
    JoinRequest,
    TaskHeader,
    TaskKind,
)
from fedhive.common.wire.tensors import spec_of, tensor_bytes

log = logging.getLogger("fedhive.client")

SECAGG_KEYS = "secagg"  # prefix of the secure round's parameters in a task config


@dataclass
class NodeStats:
    rounds_trained: int = 0
    evaluations: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    refusals: int = 0


class Node:
    def __init__(
        self,
        config: ClientConfig,
        transport: Transport,
        task: Task | None = None,
        before_task: Callable[[], object] | None = None,  # e.g. re-choose the thread count
        run_id: str = "",  # a standing node: the run it was offered (joins only that run)
    ) -> None:
        self.config = config
        self.run_id = run_id
        self.before_task = before_task
        self.transport = transport
        self.device = resolve_device(config.device)
        self.ledger = dp_sgd.make_ledger(config)  # this site's own DP-SGD budget
        self.task = task or load_task(
            config.task,
            TaskContext(
                role="node",
                data_dir=config.data_dir,
                device=self.device,
                seed=config.seed,
                args=config.task_args,
                privacy=self.ledger,
            ),
        )
        examples = self.task.num_examples()
        if examples <= 0:  # found now, not when the node is first selected
            where = f"in {config.data_dir}" if config.data_dir else "(no --data folder given)"
            raise TaskError(
                f"this node has no training data: the task reports {examples} examples {where}. "
                "Give --data DIR, the folder with this node's private data"
            )
        self.model = self.task.build_model().to(self.device)
        self.state = exchanged_state(self.model, self.task)
        self.specs = [spec_of(name, t) for name, t in self.state.items()]
        self.download = ModelDownload(self.specs, self.state)
        self.stages = load_stages(config.pipeline.node) if config.pipeline else []
        self._base: np.ndarray | None = None  # the downloaded model (flat), for the pipeline
        self.identity = load_node_identity(
            config.identity_key, config.identity_cert, config.tls_ca, config.name
        )
        if not config.insecure and not self.identity.cert:
            log.warning(
                "no secure-aggregation identity certificate (identity.crt in the bundle): this "
                "node cannot take part in secure rounds of a mutual-TLS run"
            )
        self.stop_event = threading.Event()
        self.stats = NodeStats()
        self.session = Session(config, transport, self.stop_event, self._join_request, self._joined)
        self.secure = SecureRounds(
            transport,
            self.identity,
            self.specs,
            self.state,
            self.stages,
            config.poll_wait_s,
            self.stop_event.is_set,
        )

    def _join_request(self) -> JoinRequest:
        return JoinRequest(
            self.config.name,
            self.device,
            self.task.num_examples(),
            identity_key=self.identity.public,
            identity_cert=self.identity.cert,
            run_id=self.run_id,
        )

    def _joined(self, joined: JoinReply) -> None:
        self.ledger.begin_run(joined.run_id)

    def stop(self) -> None:
        self.stop_event.set()
        self.transport.cancel()

    # ------------------------------------------------------------------ main loop

    def run(self) -> NodeStats:
        self.session.start()
        try:
            while not self.stop_event.is_set():
                try:
                    if self._step():
                        break
                except UnknownRunError as exc:  # a standing node's run is over
                    log.info("the run is over: %s", exc)
                    break
                except UnknownNodeError as exc:
                    log.warning("%s; joining again", exc)
                    self.session.rejoin()
                except AccessDeniedError as exc:
                    log.error(
                        "the coordinator refuses this node's identity: %s. Retrying cannot help: "
                        "ask the consortium operator (certificate, allow-list)",
                        exc,
                    )
                    raise
                except TransportError as exc:
                    if self.stop_event.is_set():
                        break
                    log.warning("lost the coordinator (%s); retrying", exc)
                    self.session.backoff()
                except RequestRefused as exc:
                    self.stats.refusals += 1
                    log.error("the coordinator refused this node's message: %s", exc)
                    self.session.pause_after_refusal()
        finally:
            self.stop_event.set()
            self.session.leave()
            self.session.close()
        return self.stats

    def _step(self) -> bool:
        """One pull and what it asks for; True when the run is finished."""
        joined = self.session.ensure_joined()
        stream = self.transport.pull(joined.auth, self.config.poll_wait_s)
        header = next(stream, None)
        header_at = time.perf_counter()
        if not isinstance(header, TaskHeader):
            raise InvalidUpdateError("task stream did not start with a header")
        self.session.reached()
        if header.kind == TaskKind.WAIT:
            return False
        if header.kind == TaskKind.FINISH:
            log.info("run finished after round %d", header.round)
            return True
        if self.before_task is not None:
            self.before_task()
        config, dp_keys = dp_sgd.split(header.config)
        secure: tuple[SecureTask, KeyExchange] | None = None
        if header.kind == TaskKind.TRAIN:
            task = SecureTask.from_config(config)
            elements = sum(s.numel for s in self.specs)  # this node's own model, not a claim
            if task is not None and (
                why := task.noise_refusal(elements, self.config.dp_min_noise_multiplier)
            ):
                close = getattr(stream, "close", None)
                if close is not None:  # the download is not wanted: end the stream
                    close()
                self.session.decline(joined, header.round, why)
                self.session.pause_after_refusal()
                return False
            secure = (task, self.secure.start(joined, task)) if task is not None else None
            # the secure round's parameters are the runtime's, not training settings for the task
            config = {k: v for k, v in config.items() if not k.startswith(SECAGG_KEYS)}
        self._receive(header, stream)
        self._base = None
        if header.kind == TaskKind.TRAIN and (
            self.stages or (secure is not None and secure[0].dp_variance is not None)
        ):
            self._base = flat_values(
                self.specs, self.state
            )  # the pipeline works on the delta from it
        if secure is not None:
            secure[1].allow_masking()
        if header.kind == TaskKind.EVALUATE:
            result = self.task.evaluate(self.model, config)
            n, metrics = (result.num_examples, dict(result.metrics)) if result else (0, {})
            self.transport.report_evaluation(
                EvaluationReport(joined.auth, header.round, n, metrics)
            )
            self.stats.evaluations += 1
            self.session.task_done()
            log.info("round %d: evaluated %s", header.round, _fmt(metrics))
            return False
        download_s = time.perf_counter() - header_at
        self._train_and_push(joined, header, config, dp_keys, secure, download_s)
        return False

    def _receive(self, header: TaskHeader, stream: Iterator[object]) -> None:
        self.stats.bytes_down += self.download.receive(header, stream)

    def _train_and_push(
        self,
        joined: JoinReply,
        header: TaskHeader,
        config: dict,
        dp_keys: dict,
        secure: tuple[SecureTask, KeyExchange] | None,
        download_s: float,
    ) -> None:
        started = time.perf_counter()
        eval_n, eval_metrics = 0, {}
        if config.get("evaluate", False):
            ev = self.task.evaluate(self.model, config)
            if ev is not None:
                eval_n, eval_metrics = ev.num_examples, dict(ev.metrics)
        try:
            sgd = dp_sgd.arm(self.ledger, header.round, dp_keys)
            fit = self.task.fit(self.model, config)
            if fit.num_examples <= 0:
                raise TaskError("fit() must report a positive number of examples")
            epsilon = dp_sgd.reported_epsilon(self.ledger, sgd)
        except PrivacyBudgetExceeded as exc:  # this site's budget wins: decline, keep going
            self.secure.end()
            self.session.decline(joined, header.round, str(exc))
            return
        except Exception as exc:  # the coordinator stops waiting for this node, then it stops
            self.secure.end()
            self.session.decline(
                joined, header.round, f"training failed: {type(exc).__name__}: {exc}"
            )
            raise
        trained_at = time.perf_counter()
        train_s = trained_at - started
        buffers = [tensor_bytes(t) for t in self.state.values()]
        trailer = (dict(fit.metrics), eval_metrics, eval_n, epsilon)
        if secure is not None:
            try:
                sent = self.secure.push(
                    joined, header, *secure, fit.num_examples, trailer, self._base
                )
            except (SecAggError, ConfigError, InvalidUpdateError) as exc:  # e.g. NaN
                self.secure.end()
                log.error("round %d: secure aggregation failed: %s", header.round, exc)
                self.session.decline(joined, header.round, f"secure aggregation failed: {exc}")
                return
            self.secure.end()
        else:
            if self.stages:
                try:
                    buffers = through_stages(self.specs, self.state, self._base, self.stages)
                except (ConfigError, InvalidUpdateError) as exc:  # a stage refused the update
                    log.error("round %d: update pipeline: %s", header.round, exc)
                    self.session.decline(joined, header.round, f"update pipeline: {exc}")
                    return
            sent = self.transport.push(
                update_messages(joined, header, fit.num_examples, self.specs, buffers, trailer)
            )
        upload_s = time.perf_counter() - trained_at
        self.stats.bytes_up += sent
        self.stats.rounds_trained += 1
        self.session.task_done()
        log.info(
            "round %d: trained on %d examples in %.2fs %s; sent %.1f MB "
            "(download %.3fs, train %.3fs, upload %.3fs%s)",
            header.round,
            fit.num_examples,
            train_s,
            _fmt(fit.metrics),
            sent / 1e6,
            download_s,
            train_s,
            upload_s,
            gpu_peak(self.device),
        )


def _fmt(metrics: object) -> str:
    if not isinstance(metrics, dict) or not metrics:
        return ""
    return " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
