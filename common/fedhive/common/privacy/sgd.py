"""Record-level DP-SGD at each site: the settings, how they travel, the node's own budget.

* :class:`SgdDPSettings`: the coordinator's ``[dp.sgd]`` table: a ``noise_multiplier``, or a
  ``target_epsilon`` for the whole run (each node calibrates its noise to reach it after the run's
  ``rounds``, at its own sampling rate), and the per-example clipping norm ``max_grad_norm``.
* :func:`task_config`: those settings and the run's delta as keys of the round's training config
  (``dp_sgd_*``); :meth:`SgdRound.from_config` takes them back out on the node, validated (the
  coordinator's numbers are claims too).
* :class:`PrivacyLedger`: the node's ledger of its own budget in this run. The node's
  ``max_epsilon`` (at its ``delta``, default the run's) wins: a round that would take the node past
  it raises :class:`~fedhive.common.errors.PrivacyBudgetExceeded` before any training, and the node
  declines the round. The run's ``[dp] max_epsilon`` travels with the round (``dp_sgd_max_epsilon``)
  and the ledger enforces it the same way: only the site knows its sampling rate and steps (its
  record count, batch size and epochs), so only the site can tell what its next round would
  spend. Each round trained is written (atomically) to the node's state file before its update
  is sent, so the ledger survives a node restart within the run.

The training itself (Opacus's per-sample clipping and noise, Poisson sampling) is
:mod:`fedhive.common.privacy.sgd_training`; the accountant :mod:`fedhive.common.privacy.rdp`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedhive.common.errors import PrivacyBudgetExceeded, TaskError
from fedhive.common.privacy import rdp

if TYPE_CHECKING:  # pragma: no cover
    from fedhive.common.privacy.settings import DPSettings

log = logging.getLogger("fedhive.privacy")

KEY_PREFIX = "dp_sgd_"  # the round's training config keys of DP-SGD
STATE_VERSION = 1
MAX_STATE_BYTES = 8 << 20  # a ledger file larger than this is refused, not parsed
MAX_ROUNDS = 1_000_000
# the largest epsilon an update may claim: far past any meaningful budget, small enough to print
MAX_EPSILON_CLAIM = 1e6


class SgdDPSettings(BaseModel):
    """``[dp.sgd]``: record-level DP-SGD on every node (Opacus)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    noise_multiplier: float | None = Field(
        default=None, gt=0, le=rdp.NOISE_MAX, allow_inf_nan=False
    )
    target_epsilon: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    max_grad_norm: float = Field(default=1.0, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_mechanism(self) -> SgdDPSettings:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("[dp.sgd] needs exactly one of noise_multiplier and target_epsilon")
        return self


class SgdRound(BaseModel):
    """One round's DP-SGD settings as a node receives them (validated on the node)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    noise_multiplier: float | None = Field(
        default=None, gt=0, le=rdp.NOISE_MAX, allow_inf_nan=False
    )
    target_epsilon: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    rounds: int = Field(default=1, ge=1, le=MAX_ROUNDS)
    max_grad_norm: float = Field(gt=0, allow_inf_nan=False)
    delta: float = Field(gt=0, lt=1, allow_inf_nan=False)
    max_epsilon: float | None = Field(default=None, gt=0, allow_inf_nan=False)  # the run's

    @model_validator(mode="after")
    def _one_mechanism(self) -> SgdRound:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("needs exactly one of noise_multiplier and target_epsilon")
        return self

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SgdRound | None:
        """The DP-SGD keys of a training config (None when there are none); TaskError naming
        each bad one."""
        keys = {k[len(KEY_PREFIX) :]: v for k, v in config.items() if k.startswith(KEY_PREFIX)}
        if not keys:
            return None
        try:
            return cls.model_validate(keys)
        except ValidationError as exc:
            problems = [
                f"{KEY_PREFIX}{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            ]
            raise TaskError(
                "invalid DP-SGD settings from the coordinator: " + "; ".join(problems)
            ) from None


def task_config(dp: DPSettings | None, rounds: int) -> dict[str, float | int]:
    """The ``dp_sgd_*`` keys of every training round's config (empty without ``[dp.sgd]``)."""
    if dp is None or dp.sgd is None:
        return {}
    sgd = dp.sgd
    out: dict[str, float | int] = {
        "max_grad_norm": sgd.max_grad_norm,
        "delta": dp.delta,
        "rounds": rounds,
    }
    if sgd.noise_multiplier is not None:
        out["noise_multiplier"] = sgd.noise_multiplier
    if sgd.target_epsilon is not None:
        out["target_epsilon"] = sgd.target_epsilon
    if dp.max_epsilon is not None:  # the run's budget: each site's ledger enforces it too
        out["max_epsilon"] = dp.max_epsilon
    return {KEY_PREFIX + k: v for k, v in out.items()}


def check_train(dp: DPSettings | None, train: Mapping[str, Any]) -> None:
    """ValueError naming a ``[train]`` setting DP-SGD cannot run with (found on the coordinator
    before the run exists, not by every node at round 1)."""
    if dp is None or dp.sgd is None:
        return
    mu = train.get("mu", 0)
    if isinstance(mu, int | float) and mu > 0:
        raise ValueError(
            f"[dp.sgd] with train.mu = {mu} (FedProx): the proximal term's gradient would bypass "
            "the per-example clipping; set mu = 0 or drop [dp.sgd]"
        )


def check_epsilon_claim(value: float) -> float:
    """A node's reported epsilon from the wire: finite, >= 0, at most MAX_EPSILON_CLAIM
    (ValueError naming the problem otherwise)."""
    if not (math.isfinite(value) and 0 <= value <= MAX_EPSILON_CLAIM):
        raise ValueError(
            f"dp_epsilon must be a finite number in [0, {MAX_EPSILON_CLAIM:g}], got {value!r}"
        )
    return value


def strip(config: Mapping[str, Any]) -> dict[str, Any]:
    """The training config without its DP-SGD keys (what the task sees)."""
    return {k: v for k, v in config.items() if not k.startswith(KEY_PREFIX)}


class PrivacyLedger:
    """The node's DP-SGD spending in one run, against its own budget.

    ``arm(round, settings)`` before a training round (``settings`` None: no DP this round); the
    shared training loop then asks :meth:`noise_multiplier`, :meth:`check` and :meth:`spend`.
    ``path``: the JSON state file (None: the ledger lives in memory only; a restarted node starts
    from zero, which the node warns about).
    """

    def __init__(
        self,
        max_epsilon: float | None = None,
        delta: float | None = None,
        path: Path | None = None,
    ) -> None:
        self.max_epsilon = max_epsilon
        self.delta = delta
        self.path = path
        self.run_id = ""
        self.history: list[rdp.Entry] = []
        self.settings: SgdRound | None = None
        self.round = 0
        self.spent_round: int | None = None  # the round the last spend was for
        self._calibrated: dict[tuple[float, float, int, int, float], float] = {}

    # ---------------------------------------------------------------- run and round

    def begin_run(self, run_id: str) -> None:
        """Load this run's spending from the state file (nothing when it has none)."""
        if run_id == self.run_id:
            return
        self.run_id = run_id
        self.history = [
            (float(e["noise_multiplier"]), float(e["sample_rate"]), int(e["steps"]))
            for e in self._load().get("runs", {}).get(run_id, [])
        ]
        if self.history:
            log.info(
                "DP-SGD ledger: %d round(s) already spent in run %s (epsilon %.3f)",
                len(self.history),
                run_id,
                self.epsilon(self.delta or 1e-5),
            )

    def arm(self, round_: int, settings: SgdRound | None) -> None:
        self.round, self.settings, self.spent_round = round_, settings, None

    def budget_delta(self) -> float:
        """The delta the node's budget is checked at: its own, else the run's."""
        if self.delta is not None:
            return self.delta
        return self.settings.delta if self.settings is not None else 1e-5

    # ---------------------------------------------------------------- accounting

    def epsilon(self, delta: float) -> float:
        return rdp.epsilon(self.history, delta)

    def noise_multiplier(self, sample_rate: float, steps: int) -> float:
        """This round's noise multiplier: the coordinator's, or the one that reaches its target
        epsilon (at the run's delta) after ``rounds`` rounds like this one."""
        s = self.settings
        if s is None:
            raise TaskError("DP-SGD is not on this round")
        if s.noise_multiplier is not None:
            return s.noise_multiplier
        assert s.target_epsilon is not None
        key = (s.target_epsilon, sample_rate, steps, s.rounds, s.delta)
        if key not in self._calibrated:
            try:
                self._calibrated[key] = rdp.noise_for_epsilon(
                    s.target_epsilon, s.delta, sample_rate, steps * s.rounds
                )
            except Exception as exc:
                raise TaskError(f"DP-SGD: cannot calibrate the noise: {exc}") from exc
        return self._calibrated[key]

    def check(self, entry: rdp.Entry) -> float:
        """The epsilon (at the budget's delta) after ``entry``; PrivacyBudgetExceeded if that is
        past the node's ``max_epsilon``, or past the run's (at the run's delta)."""
        after = rdp.epsilon([*self.history, entry], self.budget_delta())
        if self.max_epsilon is not None and after > self.max_epsilon:
            spent = self.epsilon(self.budget_delta())
            raise PrivacyBudgetExceeded(
                f"privacy budget: round {self.round} would take this node's epsilon from "
                f"{spent:.3f} to {after:.3f}, past its max_epsilon {self.max_epsilon} at delta "
                f"{self.budget_delta():g}"
            )
        s = self.settings
        if s is not None and s.max_epsilon is not None:
            run_after = rdp.epsilon([*self.history, entry], s.delta)
            if run_after > s.max_epsilon:
                raise PrivacyBudgetExceeded(
                    f"privacy budget: round {self.round} would take this node's epsilon to "
                    f"{run_after:.3f}, past the run's [dp] max_epsilon {s.max_epsilon:g} at "
                    f"delta {s.delta:g}"
                )
        return after

    def spend(self, entry: rdp.Entry) -> None:
        """Record a round trained with DP-SGD (persisted before its update is sent)."""
        self.history.append(entry)
        self.spent_round = self.round
        self._save()

    # ---------------------------------------------------------------- state file

    def _load(self) -> dict[str, Any]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            if self.path.stat().st_size > MAX_STATE_BYTES:
                raise TaskError(f"DP-SGD ledger {self.path} is larger than {MAX_STATE_BYTES} bytes")
            data = json.loads(self.path.read_text(encoding="utf-8"))
            runs = data.get("runs", {}) if isinstance(data, dict) else None
            if data.get("version") != STATE_VERSION or not isinstance(runs, dict):
                raise ValueError("not a fedhive DP-SGD ledger (version 1)")
            for entries in runs.values():
                for e in entries:
                    sigma, q, steps = e["noise_multiplier"], e["sample_rate"], e["steps"]
                    if not (sigma > 0 and 0 < q <= 1 and steps >= 0 and math.isfinite(sigma)):
                        raise ValueError(f"bad entry {e!r}")
            return data
        except TaskError:
            raise
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise TaskError(
                f"cannot read the DP-SGD ledger {self.path}: {exc}; the node will not train "
                "without knowing what it spent (move the file away only to reset the budget)"
            ) from exc

    def _save(self) -> None:
        if self.path is None:
            return
        data = self._load() or {"version": STATE_VERSION, "runs": {}}
        data["runs"][self.run_id] = [
            {"noise_multiplier": s, "sample_rate": q, "steps": n} for s, q, n in self.history
        ]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".ledger-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise TaskError(f"cannot write the DP-SGD ledger {self.path}: {exc}") from exc
