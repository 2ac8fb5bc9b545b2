"""Round overhead of a fedhive run: seconds per round and peak memory, real processes on loopback.

Starts one coordinator (``fedhive server``) and N node processes (``fedhive client``) running the
``constant`` benchmark task (a model of P float32 numbers in 8 tensors; "training" adds a per-node
constant, so the time measured is the framework's: broadcast, upload, aggregation, checkpoint).
While they run it samples every process's peak RSS (``VmHWM`` in ``/proc/PID/status``, children
included) and the coordinator's open file descriptors every 0.2 s. When all have exited it reads
``RUN_DIR/events.jsonl`` and prints one JSON line per configuration.

Linux only (reads ``/proc``).

Usage::

    python benchmarks/round_overhead.py --params 10000000 --nodes 8 --rounds 6
    python benchmarks/round_overhead.py --grid            # P in {1M, 10M, 50M} x N in {2, 8}
    python benchmarks/round_overhead.py --large           # P=500M, N=2, R=3

Any process that fails (non-zero exit, or the timeout) makes the script print the tail of its
log and exit non-zero. Logs go to ``TMP/logs/<name>.log`` (``--keep`` keeps TMP).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

TASK = "fedhive.common.tasks.constant:make_task"
SAMPLE_S = 0.2
CLK_TCK = os.sysconf("SC_CLK_TCK")
GRID_PARAMS = (1_000_000, 10_000_000, 50_000_000)
GRID_NODES = (2, 8)


def wants_insecure(python: str) -> bool:
    """True when this fedhive's CLI has ``--insecure`` (TLS on by default): loopback runs use it."""
    out = subprocess.run(
        [python, "-m", "fedhive.common.cli", "server", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    return "--insecure" in out.stdout


def code_version() -> str:
    """``git describe`` of the checkout this script lives in (``-dirty`` with local changes)."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def add_node_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--node-threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS of each node process; default cpus // N as `fedhive simulate` "
        "(N processes share the machine), 0 leaves the environment alone",
    )


def node_threads(requested: int | None, nodes: int) -> int:
    """``--node-threads``, or each node's share of this machine's cores (what `fedhive simulate`
    gives its nodes); 0 means: leave OMP_NUM_THREADS alone."""
    return max(1, (os.cpu_count() or 1) // nodes) if requested is None else requested


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _children(pid: int) -> list[int]:
    """All descendants of ``pid`` (via /proc/PID/task/*/children)."""
    out: list[int] = []
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{p}/task/{tid}/children", encoding="ascii") as f:
                    kids = [int(x) for x in f.read().split()]
            except (OSError, ValueError):
                continue
            out.extend(kids)
            stack.extend(kids)
    return out


def _cpu_s(pid: int) -> tuple[float, float, int] | None:
    """(utime s, stime s, minor page faults) of ``pid`` (its threads, not its children)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rpartition(")")[2].split()
        return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK, int(fields[7])
    except (OSError, ValueError, IndexError):
        return None


def _fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: TextIO
    hwm_kb: int = 0  # last VmHWM seen for the process itself
    child_hwm_kb: dict[int, int] = field(default_factory=dict)  # last VmHWM per descendant
    fds: list[int] = field(default_factory=list)
    cpu_user_s: float = 0.0  # last utime seen
    cpu_sys_s: float = 0.0  # last stime seen
    minflt: int = 0  # last minor page fault count seen
    rss_trace: list[tuple[float, int]] | None = None  # (time, VmRSS kB) when traced

    @property
    def peak_kb(self) -> int:
        return self.hwm_kb + sum(self.child_hwm_kb.values())

    def sample(self, count_fds: bool) -> None:
        if self.popen.poll() is not None:
            return
        pid = self.popen.pid
        hwm = _status_kb(pid, "VmHWM")
        if hwm is not None:
            self.hwm_kb = hwm
        for child in _children(pid):
            c = _status_kb(child, "VmHWM")
            if c is not None:
                self.child_hwm_kb[child] = c
        cpu = _cpu_s(pid)
        if cpu is not None:
            self.cpu_user_s, self.cpu_sys_s, self.minflt = cpu
        if self.rss_trace is not None:
            rss = _status_kb(pid, "VmRSS")
            if rss is not None:
                self.rss_trace.append((time.time(), rss))
        if count_fds:
            n = _fd_count(pid)
            if n is not None:
                self.fds.append(n)

    def tail(self, lines: int = 40) -> str:
        if not self.log_file.closed:
            self.log_file.flush()
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"(cannot read {self.log_path}: {exc})"
        return "\n".join(text.splitlines()[-lines:])


class BenchmarkFailed(Exception):
    pass


def _spawn(name: str, argv: list[str], log_dir: Path, env: dict[str, str]) -> Proc:
    log_path = log_dir / f"{name}.log"
    log_file = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 (closed in run_once)
    popen = subprocess.Popen(
        argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
    )
    return Proc(name, popen, log_path, log_file)


def run_once(
    params: int,
    nodes: int,
    rounds: int,
    *,
    timeout_s: float,
    tmp_root: Path | None,
    keep: bool,
    profile: str | None = None,
    rss_trace: Path | None = None,
    insecure: bool = False,
    server_settings: list[str] | None = None,
    node_threads: int = 0,
) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"fedhive-bench-P{params}-N{nodes}-", dir=tmp_root))
    run_dir = tmp / "run"
    log_dir = tmp / "logs"
    log_dir.mkdir()
    config_path = tmp / "server.toml"
    settings = ["federated_evaluation = false", *(server_settings or [])]
    config_path.write_text("\n".join(settings) + "\n", encoding="utf-8")
    port = free_port()
    address = f"127.0.0.1:{port}"
    task_args = ["--task-arg", f"params={params}", "--task-arg", "tensors=8"]
    if insecure:
        task_args.append("--insecure")  # plain-text loopback, as in the integration tests
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    py = sys.executable

    server_argv = [py]
    if profile == "main":
        server_argv += ["-m", "cProfile", "-o", str(tmp / "coordinator.prof")]
    elif profile == "threads":
        wrapper = Path(__file__).resolve().with_name("profile_threads.py")
        server_argv += [str(wrapper), "-o", str(tmp / "coordinator.prof")]
    server_argv += [
        "-m", "fedhive.common.cli", "server",
        "--address", address,
        "--run-dir", str(run_dir),
        "--task", TASK, *task_args,
        "--rounds", str(rounds),
        "--min-nodes", str(nodes),
        "--no-progress",
        "--config", str(config_path),
    ]  # fmt: skip
    procs: list[Proc] = []
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    failed: list[str] = []
    try:
        procs.append(_spawn("coordinator", server_argv, log_dir, env))
        if rss_trace is not None:
            procs[0].rss_trace = []
        for i in range(nodes):
            client_argv = [
                py, "-m", "fedhive.common.cli", "client",
                "--server", address,
                "--task", TASK, *task_args,
                "--name", f"node-{i}",
                "--seed", str(i),
                "--device", "cpu",
            ]  # fmt: skip
            node_env = dict(env)
            if node_threads > 0:  # as `fedhive simulate`: N nodes share this machine's cores
                node_env["OMP_NUM_THREADS"] = str(node_threads)
            procs.append(_spawn(f"node-{i}", client_argv, log_dir, node_env))

        deadline = started + timeout_s
        timed_out = False
        while True:
            for j, p in enumerate(procs):
                p.sample(count_fds=(j == 0))
            running = [p for p in procs if p.popen.poll() is None]
            if not running:
                break
            # A failed process will not be rescued by waiting: stop early.
            if any(p.popen.returncode not in (None, 0) for p in procs):
                time.sleep(2.0)  # let the others notice and log
                break
            if time.monotonic() >= deadline:
                timed_out = True
                break
            time.sleep(SAMPLE_S)
        wall_s = time.monotonic() - started

        for p in procs:
            if p.popen.poll() is None:
                failed.append(
                    f"{p.name}: still running "
                    + ("at the timeout" if timed_out else "after another process failed")
                )
                p.popen.terminate()
        for p in procs:
            try:
                p.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()
            if p.popen.returncode != 0 and not any(f.startswith(p.name + ":") for f in failed):
                failed.append(f"{p.name}: exit status {p.popen.returncode}")
    finally:
        for p in procs:
            if p.popen.poll() is None:
                p.popen.kill()
                p.popen.wait()
            p.log_file.close()

    if rss_trace is not None and procs and procs[0].rss_trace is not None:
        with open(rss_trace, "w", encoding="utf-8") as f:
            for t, kb in procs[0].rss_trace:
                f.write(f"{t:.3f} {kb * 1024 / 1e6:.1f}\n")
    if failed:
        msg = [f"P={params} N={nodes} R={rounds}: " + "; ".join(failed)]
        for p in procs:
            if p.popen.returncode != 0 or any(f.startswith(p.name + ":") for f in failed):
                msg.append(f"---- {p.name} ({p.log_path}), last lines ----\n{p.tail()}")
        msg.append(f"(logs kept in {tmp})")
        raise BenchmarkFailed("\n".join(msg))

    events_path = run_dir / "events.jsonl"
    events = [
        json.loads(line)
        for line in events_path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    committed = [e for e in events if e.get("event") == "round" and e.get("committed")]
    if len(committed) != rounds:
        raise BenchmarkFailed(
            f"P={params} N={nodes} R={rounds}: {len(committed)} committed round(s) in "
            f"{events_path}, expected {rounds}\n" + procs[0].tail()
        )
    durations = [float(e["duration_s"]) for e in committed]
    steady = durations[1:] or durations
    # Round close to round close: adds what duration_s leaves out (checkpoint write, encoding).
    closes = [float(e["time"]) for e in committed]
    periods = [b - a for a, b in itertools.pairwise(closes)]
    coord = procs[0]
    model_mb = params * 4 / 1e6
    coord_mb = coord.peak_kb * 1024 / 1e6
    result: dict[str, Any] = {
        "P": params,
        "N": nodes,
        "R": rounds,
        "sec_per_round_median": round(statistics.median(steady), 4),
        "sec_per_round_all": [round(d, 4) for d in durations],
        "period_s_median": round(statistics.median(periods), 4) if periods else None,
        "aggregate_s_all": [round(float(e.get("aggregate_s", 0.0)), 4) for e in committed],
        "coord_peak_rss_mb": round(coord_mb, 1),
        "node_peak_rss_mb": round(max(p.peak_kb for p in procs[1:]) * 1024 / 1e6, 1),
        "model_mb": round(model_mb, 1),
        "coord_rss_over_model": round(coord_mb / model_mb, 2),
        "bytes_in_per_round": int(statistics.median(int(e["bytes_in"]) for e in committed)),
        "bytes_out_per_round": int(statistics.median(int(e["bytes_out"]) for e in committed)),
        "coord_fds_max": max(coord.fds) if coord.fds else None,
        "coord_cpu_user_s": round(coord.cpu_user_s, 2),
        "coord_cpu_sys_s": round(coord.cpu_sys_s, 2),
        "coord_minor_faults": coord.minflt,
        "nodes_cpu_user_s": round(sum(p.cpu_user_s for p in procs[1:]), 2),
        "nodes_cpu_sys_s": round(sum(p.cpu_sys_s for p in procs[1:]), 2),
        "wall_s": round(wall_s, 2),
        # 1-min load average before and after: other work on the machine skews the timings.
        "loadavg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "node_threads": node_threads or None,
        "server_settings": server_settings or [],
        "code": code_version(),
    }
    if profile:
        result["profile"] = str(tmp / "coordinator.prof")
    if not keep and not profile:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        shutil.rmtree(run_dir / "models", ignore_errors=True)  # up to R+1 model copies on disk
        result["tmp"] = str(tmp)
    return result


def markdown_table(results: list[dict[str, Any]]) -> str:
    head = (
        "| P (params) | N | s/round (median, excl. round 1) | coordinator peak RSS (MB) "
        "| node peak RSS (MB) | coord RSS / model | MB in / round | MB out / round |"
    )
    rows = [head, "|" + "---|" * 8]
    for r in results:
        rows.append(
            f"| {r['P']:,} | {r['N']} | {r['sec_per_round_median']:.3f} "
            f"| {r['coord_peak_rss_mb']:,.0f} | {r['node_peak_rss_mb']:,.0f} "
            f"| {r['coord_rss_over_model']:.2f} | {r['bytes_in_per_round'] / 1e6:,.1f} "
            f"| {r['bytes_out_per_round'] / 1e6:,.1f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--params", type=int, default=10_000_000, help="model size in float32 numbers")
    p.add_argument("--nodes", type=int, default=8)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--grid", action="store_true", help="P in {1M, 10M, 50M} x N in {2, 8}")
    p.add_argument("--large", action="store_true", help="P=500M, N=2, R=3")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per configuration")
    p.add_argument("--tmp", type=Path, default=None, help="parent folder for run dirs and logs")
    p.add_argument("--keep", action="store_true", help="keep logs and events (models deleted)")
    p.add_argument("--table", action="store_true", help="also print a markdown table")
    p.add_argument(
        "--profile",
        choices=("main", "threads"),
        help="run the coordinator under cProfile: main thread only (python -m cProfile) or every\n"
        "thread (benchmarks/profile_threads.py); the .prof files are kept in TMP",
    )
    p.add_argument(
        "--rss-trace", type=Path, help="write the coordinator's VmRSS over time (unix time, MB)"
    )
    p.add_argument(
        "--set",
        dest="server_settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a line of the coordinator's TOML config (repeatable), e.g. --set spool_wait_s=0",
    )
    add_node_threads_arg(p)
    ns = p.parse_args(argv)

    if ns.grid:
        configs = [(P, N, ns.rounds) for P in GRID_PARAMS for N in GRID_NODES]
    elif ns.large:
        configs = [(500_000_000, 2, 3)]
    else:
        configs = [(ns.params, ns.nodes, ns.rounds)]

    insecure = wants_insecure(sys.executable)
    results: list[dict[str, Any]] = []
    for P, N, R in configs:
        try:
            res = run_once(
                P,
                N,
                R,
                timeout_s=ns.timeout,
                tmp_root=ns.tmp,
                keep=ns.keep,
                profile=ns.profile,
                rss_trace=ns.rss_trace,
                insecure=insecure,
                server_settings=ns.server_settings,
                node_threads=node_threads(ns.node_threads, N),
            )
        except BenchmarkFailed as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            if results and (ns.grid or ns.table):
                print(markdown_table(results))
            return 1
        results.append(res)
        print(json.dumps(res), flush=True)
    if ns.grid or ns.table:
        print()
        print(markdown_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
