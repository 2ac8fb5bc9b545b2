"""A node's intra-op thread count: usable CPUs (affinity, cgroup quota) shared among the nodes
on the machine, unless --threads or OMP_NUM_THREADS decide."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fedhive.client.cli import main as client_main
from fedhive.client.threads import choose_threads, colocated_nodes, is_node_command
from fedhive.common.runtime.cpus import UsableCpus, cgroup_cpu_quota
from fedhive.server.simulate import prepare_main

TWO = UsableCpus(count=2, affinity=2, quota=None)


@pytest.fixture
def restore() -> Iterator[None]:
    """torch's thread count and the logging set-up, as the CLI found them."""
    before, root = torch.get_num_threads(), logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    torch.set_num_threads(before)
    root.handlers[:] = handlers
    root.setLevel(level)


def test_three_nodes_on_two_cpus_get_one_thread_each() -> None:
    threads, why = choose_threads(None, {}, TWO, nodes=3)

    assert threads == 1
    assert "2 usable CPU(s)" in why and "3 fedhive node(s)" in why


def test_a_node_alone_uses_every_usable_cpu() -> None:
    cpus = UsableCpus(count=8, affinity=16, quota=7.5)

    assert choose_threads(None, {}, cpus, nodes=1)[0] == 8
    assert choose_threads(None, {}, cpus, nodes=3)[0] == 2


def test_the_flag_then_omp_num_threads_decide() -> None:
    env = {"OMP_NUM_THREADS": "3"}

    assert choose_threads(5, env, TWO, nodes=3) == (5, "--threads")
    assert choose_threads(None, env, TWO, nodes=3) == (3, "OMP_NUM_THREADS")
    assert choose_threads(None, {"OMP_NUM_THREADS": "x"}, TWO, nodes=2)[0] == 1


def write_cgroup(root: Path, proc: str, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    cgroup = root / "proc-self-cgroup"
    cgroup.write_text(proc)
    return cgroup


def test_a_cgroup_v2_quota_on_an_ancestor_counts(tmp_path: Path) -> None:
    cgroup = write_cgroup(
        tmp_path,
        "0::/box/job\n",
        {"box/cpu.max": "150000 100000\n", "box/job/cpu.max": "max 100000\n"},
    )

    assert cgroup_cpu_quota(tmp_path, cgroup) == 1.5


def test_a_cgroup_v1_quota_and_no_quota(tmp_path: Path) -> None:
    v1 = write_cgroup(
        tmp_path / "v1",
        "4:cpu,cpuacct:/docker/abc\n",
        {
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
        },
    )
    none = write_cgroup(tmp_path / "none", "0::/\n", {"cpu.max": "max 100000\n"})

    assert cgroup_cpu_quota(tmp_path / "v1", v1) == 2.0
    assert cgroup_cpu_quota(tmp_path / "none", none) is None


def test_node_processes_are_counted_from_their_command_lines(tmp_path: Path) -> None:
    commands = {
        "11": ["/venv/bin/python", "/venv/bin/fedhive", "client", "--server", "h:1"],
        "12": ["python3", "-m", "fedhive.common.cli", "client", "--insecure"],
        "13": ["python3", "-m", "fedhive.common.cli", "server", "--rounds", "3"],
        "14": ["bash", "-c", "echo client"],
    }
    for pid, argv in commands.items():
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (tmp_path / "self").mkdir()

    assert colocated_nodes(tmp_path) == 2
    assert colocated_nodes(tmp_path / "missing") == 1
    assert is_node_command(["python", "-m", "fedhive.client.cli"])


def test_the_threads_flag_sets_torchs_thread_count_and_is_logged(
    tmp_path: Path, restore: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    assert prepare_main(["--out", str(tmp_path), "--nodes", "site-a"]) == 0
    torch.set_num_threads(2)

    # Execute: the coordinator is unreachable, so the node stops after building itself
    code = client_main(
        ["--insecure", "--server", "127.0.0.1:9", "--data", str(tmp_path / "site-a"),
         "--max-connect-attempts", "1", "--threads", "1"]
    )  # fmt: skip

    # Assert
    assert code == 1
    assert torch.get_num_threads() == 1
    assert "torch intra-op threads: 1 (--threads)" in capsys.readouterr().err
