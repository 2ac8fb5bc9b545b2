"""MiniLM (all-MiniLM-L6-v2, offline) on the synthetic triage text task, N nodes over loopback gRPC:
LoRA (r=8, query/value; adapters + head travel) and, for comparison, full fine-tuning.

For each mode: held-out accuracy / macro-F1 per round, bytes per round (updates in + broadcasts
out, as the coordinator counted them) and seconds per round. Prints one JSON line per mode.

    python benchmarks/text_lora_rounds.py [--nodes 3] [--rounds 5] [--full-rounds 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fedhive.server.simulate import main as simulate

TASK = "fedhive.common.tasks.text:make_task"


def run(ns: argparse.Namespace, mode: str, rounds: int) -> dict:
    workdir = ns.workdir / mode
    argv = [
        "--task",
        TASK,
        "--nodes",
        str(ns.nodes),
        "--alpha",
        str(ns.alpha),
        "--rounds",
        str(rounds),
        "--seed",
        str(ns.seed),
        "--train",
        f"epochs={ns.epochs}",
        "--train",
        f"batch_size={ns.batch_size}",
        "--round-timeout",
        "1800",
        "--workdir",
        str(workdir),
        "--no-progress",
        "--log-level",
        "WARNING",
    ]
    if mode == "full":
        argv += ["--task-arg", "lora=false"]
    code = simulate(argv)
    if code:
        raise SystemExit(f"{mode} run failed ({code}); see {workdir}/logs")
    events = [json.loads(x) for x in (workdir / "run" / "events.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["event"] == "start")
    rounds_ev = [e for e in events if e.get("event") == "round" and e.get("committed")]
    final = next((e for e in events if e.get("event") == "evaluate"), None)
    return {
        "mode": mode,
        "nodes": ns.nodes,
        "rounds": len(rounds_ev),
        "model_exchanged_bytes": start["model_bytes"],
        "tensors": start["tensors"],
        "bytes_per_round": round(
            sum(e["bytes_in"] + e["bytes_out"] for e in rounds_ev) / len(rounds_ev)
        ),
        "seconds_per_round": [round(e["duration_s"], 2) for e in rounds_ev],
        "server_accuracy": [round(e["server_evaluate"]["accuracy"], 4) for e in rounds_ev],
        "server_macro_f1": [round(e["server_evaluate"]["macro_f1"], 4) for e in rounds_ev],
        "train_loss": [round(e["train"]["loss"], 4) for e in rounds_ev],
        "final_federated_accuracy": round(final["evaluate"]["accuracy"], 4) if final else None,
        "run_dir": str(workdir / "run"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--full-rounds", type=int, default=2, help="0 skips full fine-tuning")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=Path("runs/text-lora"))
    ns = p.parse_args(argv)
    lora = run(ns, "lora", ns.rounds)
    print(json.dumps(lora))
    if ns.full_rounds:
        full = run(ns, "full", ns.full_rounds)
        print(json.dumps(full))
        ratio = lora["model_exchanged_bytes"] / full["model_exchanged_bytes"]
        print(json.dumps({"lora_over_full_bytes": round(ratio, 5)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
