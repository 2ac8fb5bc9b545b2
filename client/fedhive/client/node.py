"""The node runtime: join -> (pull -> evaluate -> train -> push)* -> leave.

The model is built once and lives for the node's lifetime; each round's global model is staged
in CPU buffers, checked (order, sizes, finite values, digest) and only then copied into the live
model, so a broken download never corrupts it. A heartbeat thread keeps the node alive in the
coordinator's eyes while it trains. Unreachable coordinator: exponential backoff with jitter.
Coordinator restarted (node unknown): join again. SIGTERM: leave cleanly. The coordinator
refusing this node's identity (revoked certificate, not on its allow-list): stop with the reason.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from fedhive.client.device import describe_device, gpu_peak, resolve_device
from fedhive.client.download import ModelDownload
from fedhive.client.pipeline import flat_values, secure_stages, through_stages
from fedhive.client.privacy import sgd as dp_sgd
from fedhive.client.secagg import (
    KeyExchange,
    SecureTask,
    TransportChannel,
    load_node_identity,
    model_blocks,
    push_update,
)
from fedhive.client.transport import Transport
from fedhive.common.api.hooks import Block
from fedhive.common.api.pipeline import load_stages, split
from fedhive.common.api.task import Task, TaskContext, exchanged_state, load_task
from fedhive.common.config import ClientConfig
from fedhive.common.errors import (
    AccessDeniedError,
    ConfigError,
    FedhiveError,
    InvalidUpdateError,
    PrivacyBudgetExceeded,
    RequestRefused,
    SecAggError,
    TaskError,
    TransportError,
    UnknownNodeError,
    UnknownRunError,
)
from fedhive.common.secagg.node import NodeSecAgg
from fedhive.common.secagg.stages import COUNT_WORDS, masked_spec, masked_words
from fedhive.common.wire.chunks import Chunk, iter_chunks, payload_hash
from fedhive.common.wire.messages import (
    EvaluationReport,
    JoinReply,
    JoinRequest,
    TaskHeader,
    TaskKind,
    UpdateHeader,
    UpdateMessage,
    UpdateTrailer,
)
from fedhive.common.wire.tensors import TensorSpec, raw_view, spec_of, tensor_bytes, to_float

log = logging.getLogger("fedhive.client")

SECAGG_KEYS = "secagg"  # prefix of the secure round's parameters in a task config
Trailer = tuple[dict[str, float], dict[str, float], int, float | None]  # UpdateTrailer's fields


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
        self._join: JoinReply | None = None
        self._rejoin = threading.Event()
        self._attempt = 0
        self._keys: KeyExchange | None = None  # the secure round under way, if any
        self._refusals = 0  # refusals since the last task done (paces the retries)

    # ------------------------------------------------------------------ plumbing

    def _backoff(self) -> None:
        cfg = self.config
        delay = min(cfg.backoff_max_s, cfg.backoff_initial_s * (2 ** min(self._attempt, 30)))
        self._attempt += 1
        if cfg.max_connect_attempts is not None and self._attempt >= cfg.max_connect_attempts:
            raise TransportError(
                f"coordinator at {cfg.server} unreachable after {self._attempt} attempts"
            )
        self.stop_event.wait(delay * random.uniform(0.5, 1.0))

    def _pause_after_refusal(self) -> None:
        """Refused (or refusing a broken download): wait before the next try, longer each time
        until a task succeeds, so a node never spins against a coordinator."""
        cfg = self.config
        delay = min(cfg.backoff_max_s, cfg.backoff_initial_s * (2 ** min(self._refusals, 30)))
        self._refusals += 1
        self.stop_event.wait(delay * random.uniform(0.5, 1.0))

    def _ensure_joined(self) -> JoinReply:
        while self._join is None or self._rejoin.is_set():
            if self.stop_event.is_set():
                raise TransportError("stopping")
            try:
                self._join = self.transport.join(
                    JoinRequest(
                        self.config.name,
                        self.device,
                        self.task.num_examples(),
                        identity_key=self.identity.public,
                        identity_cert=self.identity.cert,
                        run_id=self.run_id,
                    )
                )
                self._rejoin.clear()
                self._attempt = 0
                self.ledger.begin_run(self._join.run_id)
                log.info(
                    "joined run %s as %s (device %s)",
                    self._join.run_id,
                    self._join.auth.node_id,
                    describe_device(self.device),
                )
            except TransportError as exc:
                log.warning("cannot reach the coordinator (%s); retrying", exc)
                self._backoff()
        return self._join

    def _heartbeat_loop(self) -> None:
        while not self.stop_event.is_set():
            joined = self._join
            interval = joined.heartbeat_interval_s if joined else 1.0
            if self.stop_event.wait(interval):
                return
            if joined is None or self._rejoin.is_set():
                continue
            try:
                self.transport.heartbeat(joined.auth)
            except UnknownNodeError:
                self._rejoin.set()
            except FedhiveError as exc:
                log.debug("heartbeat failed: %s", exc)

    def stop(self) -> None:
        self.stop_event.set()
        self.transport.cancel()

    def _messages(
        self,
        joined: JoinReply,
        header: TaskHeader,
        num_examples: int,
        specs: list[TensorSpec],
        buffers: list[memoryview],
        trailer: Trailer,
    ) -> Iterator[UpdateMessage]:
        chunks = iter_chunks(buffers, header.chunk_size or (1 << 20))
        return self._stream(joined, header, num_examples, specs, chunks, trailer)

    def _stream(
        self,
        joined: JoinReply,
        header: TaskHeader,
        num_examples: int,
        specs: list[TensorSpec],
        chunks: Iterable[Chunk],
        trailer: Trailer,
    ) -> Iterator[UpdateMessage]:
        digest = payload_hash()
        yield UpdateHeader(joined.auth, header.round, num_examples, tuple(specs))
        for chunk in chunks:
            digest.update(chunk.data)
            yield chunk
        yield UpdateTrailer(digest.digest(), *trailer)

    def _start_keys(self, joined: JoinReply, secure: SecureTask) -> KeyExchange:
        """Start the round's key exchange in the background as soon as the task arrives: it
        then runs while the model downloads (the mask once it is downloaded) and the node
        trains. The same round's task pulled again keeps the exchange under way (and its
        keys)."""
        keys = self._keys
        if keys is not None and keys.round == secure.round and not keys.failed:
            return keys
        if keys is not None:
            keys.cancel()
        words = masked_words(sum(s.numel for s in self.specs))
        cancelled = threading.Event()
        channel = TransportChannel(
            self.transport,
            joined.auth,
            secure.round,
            self.identity,
            None,
            words,
            wait_s=self.config.poll_wait_s,
            stopped=lambda: self.stop_event.is_set() or cancelled.is_set(),
        )
        node_id = joined.auth.node_id

        def machine() -> NodeSecAgg:
            return NodeSecAgg(
                node_id, self.identity.key, channel.directory, secure.graph, secure.round, words
            )

        self._keys = KeyExchange(
            secure.round, channel, machine, cancelled, secure.dp_variance, words
        )
        return self._keys.start()

    def _secure_push(
        self,
        joined: JoinReply,
        header: TaskHeader,
        secure: SecureTask,
        keys: KeyExchange,
        num_examples: int,
        trailer: Trailer,
    ) -> int:
        """SecAgg+: the example count travels masked (the header says 1), the update as one
        int32 tensor of masked words through PushUpdate."""
        channel = keys.channel
        if not isinstance(channel, TransportChannel):  # pragma: no cover - _start_keys made it
            raise TypeError("a node's key exchange runs over its transport")
        upload_specs = [masked_spec(channel.words - COUNT_WORDS)]

        def upload(blocks: Iterator[Block]) -> int:
            chunk_size = header.chunk_size or (1 << 20)
            chunks = (
                Chunk(0, 4 * b.start + c.offset, c.data)
                for b in blocks
                for c in iter_chunks([raw_view(b.values.astype("<u4", copy=False))], chunk_size)
            )
            return self.transport.push(
                self._stream(joined, header, 1, upload_specs, chunks, trailer)
            )

        channel.upload = upload
        started = time.perf_counter()
        machine, pad = keys.pad()
        behind_s = time.perf_counter() - started
        values = model_blocks(
            to_float(tensor_bytes(t), spec.dtype)
            for spec, t in zip(self.specs, self.state.values(), strict=True)
        )
        times = keys.times
        rng = np.random.default_rng()
        floats, words = split(self.stages, secure=True)
        stages = secure_stages(secure, pad, num_examples, rng, self._base, floats, words)
        push_update(channel, machine, pad, values, num_examples, secure.quant, rng, times, stages)
        log.info(
            "round %d: secure aggregation: key exchange %.3fs (%.3fs of it masking; noise drawn "
            "alongside in %.3fs; waited %.3fs for them after training), %.3fs quantizing into "
            "the mask, %.3fs upload, %.3fs in SecAggStep calls",
            header.round,
            times.keys_s,
            times.mask_s,
            times.noise_s,
            behind_s,
            times.quantize_s,
            channel.upload_s,
            channel.waited_s,
        )
        return channel.sent

    # ------------------------------------------------------------------ main loop

    def run(self) -> NodeStats:
        beat = threading.Thread(target=self._heartbeat_loop, name="fedhive-heartbeat", daemon=True)
        beat.start()
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
                    self._rejoin.set()
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
                    self._backoff()
                except RequestRefused as exc:
                    self.stats.refusals += 1
                    log.error("the coordinator refused this node's message: %s", exc)
                    self._pause_after_refusal()
        finally:
            self.stop_event.set()
            self._leave()
        return self.stats

    def _end_keys(self) -> None:
        """This node is done with the secure round under way (pushed, or gave up on it)."""
        if self._keys is not None:
            self._keys.cancel()
            self._keys = None

    def _decline(self, joined: JoinReply, round_: int, reason: str) -> None:
        """Tell the coordinator this node cannot do the round (best effort: if the call fails,
        the round still drops the node at its deadline or heartbeat timeout)."""
        try:
            self.transport.decline(joined.auth, round_, reason[:500])
            log.warning("round %d: declined (%s)", round_, reason)
        except FedhiveError as exc:
            log.warning("round %d: could not decline (%s)", round_, exc)

    def _leave(self) -> None:
        if self._join is None:
            return
        with contextlib.suppress(FedhiveError):
            self.transport.leave(self._join.auth, "node stopping")

    def _step(self) -> bool:
        """One pull and what it asks for; True when the run is finished."""
        joined = self._ensure_joined()
        stream = self.transport.pull(joined.auth, self.config.poll_wait_s)
        header = next(stream, None)
        header_at = time.perf_counter()
        if not isinstance(header, TaskHeader):
            raise InvalidUpdateError("task stream did not start with a header")
        self._attempt = 0
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
                self._decline(joined, header.round, why)
                self._pause_after_refusal()
                return False
            secure = (task, self._start_keys(joined, task)) if task is not None else None
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
            self._refusals = 0
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
            self._end_keys()
            self._decline(joined, header.round, str(exc))
            return
        except Exception as exc:  # the coordinator stops waiting for this node, then it stops
            self._end_keys()
            self._decline(joined, header.round, f"training failed: {type(exc).__name__}: {exc}")
            raise
        trained_at = time.perf_counter()
        train_s = trained_at - started
        buffers = [tensor_bytes(t) for t in self.state.values()]
        trailer = (dict(fit.metrics), eval_metrics, eval_n, epsilon)
        if secure is not None:
            try:
                sent = self._secure_push(joined, header, *secure, fit.num_examples, trailer)
            except (SecAggError, ConfigError, InvalidUpdateError) as exc:  # e.g. NaN
                self._end_keys()
                log.error("round %d: secure aggregation failed: %s", header.round, exc)
                self._decline(joined, header.round, f"secure aggregation failed: {exc}")
                return
            self._end_keys()
        else:
            if self.stages:
                try:
                    buffers = through_stages(self.specs, self.state, self._base, self.stages)
                except (ConfigError, InvalidUpdateError) as exc:  # a stage refused the update
                    log.error("round %d: update pipeline: %s", header.round, exc)
                    self._decline(joined, header.round, f"update pipeline: {exc}")
                    return
            sent = self.transport.push(
                self._messages(joined, header, fit.num_examples, self.specs, buffers, trailer)
            )
        upload_s = time.perf_counter() - trained_at
        self.stats.bytes_up += sent
        self.stats.rounds_trained += 1
        self._refusals = 0
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
