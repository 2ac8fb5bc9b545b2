"""README.md's "Running a federation by hand" and "A standing federation", run as written
(parsed from the README).

Three changes only, to keep it fast and free of clashes: a free port instead of 8765, 2 rounds
of 1 epoch instead of 20 of 2. The one-shot block's lines are run the way a shell would:
`fedhive ...` is the installed CLI, `&` starts it in the background, `> FILE 2>&1` sends its
output to FILE, `wait` waits for the background commands. The standing block (a loop, heredocs,
variables) runs in bash itself, with `set -euo pipefail`, after the one-shot block's first two
steps (its data and certificates).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.standing import queue_rows

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SECTION = "## Running a federation by hand"
STANDING = "## A standing federation"
DEADLINE_S = 120.0


def readme_block(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(title) :]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, f"no bash block in the README section {title!r}"
    return block.group(1)


def readme_commands() -> list[str]:
    return [
        line.strip()
        for line in readme_block(SECTION).replace("\\\n", " ").splitlines()
        if shlex.split(line, comments=True)
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def adapt(line: str, port: int) -> str:
    line = line.replace(":8765", f":{port}")
    line = re.sub(r"--rounds \d+", "--rounds 2", line)
    line = re.sub(r"^rounds = 20$", "rounds = 2", line, flags=re.M)
    line = re.sub(r"^epochs = \d+$", "epochs = 1", line, flags=re.M)
    return re.sub(r"--train epochs=\d+", "--train epochs=1", line)


def shell_run(line: str, cwd: Path, background: list[subprocess.Popen[bytes]]) -> None:
    args = shlex.split(line, comments=True)
    if args == ["wait"]:
        deadline = time.monotonic() + DEADLINE_S
        for proc in background:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        return
    detach = args[-1] == "&"
    args = args[:-1] if detach else args
    out = None
    if "2>&1" in args:
        args.remove("2>&1")
    if ">" in args:
        i = args.index(">")
        out = open(cwd / args[i + 1], "wb")  # noqa: SIM115 - the process owns it
        del args[i : i + 2]
    assert args[0] == "fedhive", f"unexpected README command: {line}"
    cmd = [sys.executable, "-m", "fedhive.common.cli", *args[1:]]
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT if out else None)
    if out is not None:
        out.close()
    if detach:
        background.append(proc)
    else:
        assert proc.wait(timeout=DEADLINE_S) == 0, f"README command failed: {line}"


def test_the_readme_federation_by_hand_runs_as_written(tmp_path: Path) -> None:
    # Prepare
    port = free_port()
    lines = [adapt(line, port) for line in readme_commands()]
    background: list[subprocess.Popen[bytes]] = []

    # Execute
    try:
        for line in lines:
            shell_run(line, tmp_path, background)
    finally:
        for proc in background:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    # Assert
    assert [p.returncode for p in background] == [0] * len(background)
    assert (tmp_path / "runs" / "digits" / "models" / "round-0002.safetensors").exists()
    log = (tmp_path / "server.log").read_text(encoding="utf-8")
    rounds = [line for line in log.splitlines() if re.match(r"round +\d+: 3/3 nodes", line)]
    assert len(rounds) == 2 and all("test accuracy=" in line for line in rounds), log
    header = next((ln for ln in log.splitlines() if "examples" in ln and "round" in ln), log)
    assert "fed-eval acc" in header and "test acc" in header and "…" not in header
    summary_at = log.index("fedhive run summary")
    assert not re.search(r"node site-. left", log[summary_at:]), log[summary_at:]


def test_the_readme_standing_federation_runs_as_written(tmp_path: Path) -> None:
    # Prepare: the one-shot block's data and certificates, then the standing block as a script
    port = free_port()
    for line in readme_commands():
        if line.startswith(("fedhive prepare", "fedhive certs")):
            shell_run(adapt(line, port), tmp_path, [])
    script = tmp_path / "standing.sh"
    script.write_text("set -euo pipefail\n" + adapt(readme_block(STANDING), port))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    # Execute (in its own process group: whatever it left running is killed after it)
    proc = subprocess.Popen(
        ["bash", str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=DEADLINE_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    # Assert: the study finished with its rounds from the three sites; the nodes were listed
    # with their approved tasks; the second run was stopped by alice; every process ended
    # cleanly (the script's last line waits for them)
    logs = {f.name: f.read_text() for f in tmp_path.glob("*.log")}
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:], logs)
    assert not any("Traceback" in text for text in logs.values()), logs
    assert all("leaving the federation" in logs[f"site-{x}.log"] for x in "abc"), logs
    (first, state, _), (second, stopped, reason) = queue_rows(tmp_path / "state")
    assert (state, stopped) == ("finished", "stopped"), queue_rows(tmp_path / "state")
    assert reason == "stopped by administrator alice: not needed"
    assert re.search(r"round +2: 3/3 nodes", done.stdout), done.stdout
    assert f"run {second} stopped by administrator alice: not needed" in done.stdout
    assert (tmp_path / "state" / "runs" / first / "models" / "round-0002.safetensors").exists()
    assert "site-a" in done.stdout and "fedhive.common.tasks.constant:make_task" in done.stdout
