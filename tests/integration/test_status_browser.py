"""The status page in a real browser: headless Chromium (Debian's package, installed by the test
command: scripts/install_browser.sh) loads the page of a live `fedhive server` process while two
node processes train the digits task; the round counter advances and the accuracy chart is drawn.
The nodes train behind a gate the test holds (gated_task.py), so the run waits at round 1 and at
round HELD_AT until the page has shown it: no race between a loaded machine and a short run.
The screenshot is the one docs show (FEDHIVE_UPDATE_FIGURES=1 writes docs/figures/)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedhive.common.tasks import digits
from tests.integration.gated_task import GATE_ENV
from tests.integration.harness import wait_all
from tests.integration.test_node_lifecycle import free_port
from tests.integration.test_resume import DIGITS, node_cmd

ROUNDS = 6
HELD_AT = 3  # the round the run is held at while the page is checked
GATED = "tests.integration.gated_task:make_task"
DEADLINE_S = 90.0
FIGURE = Path(__file__).resolve().parents[2] / "docs" / "figures" / "status-page.png"
URL_LINE = re.compile(rb"status page on (http://127\.0\.0\.1:\d+/)")
SERIES_RGB = (11, 107, 203)  # the first series' stroke (#0b6bcb in status.js)
COUNT_SERIES_PIXELS = """
const canvas = document.querySelector('[data-chart$="/accuracy"] canvas');
if (!canvas) return -1;
const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let n = 0;
for (let i = 0; i < px.length; i += 4) {
  if (Math.abs(px[i] - arguments[0]) < 30 && Math.abs(px[i + 1] - arguments[1]) < 30 &&
      Math.abs(px[i + 2] - arguments[2]) < 30 && px[i + 3] > 128) n++;
}
return n;
"""


def browser() -> Any:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        reason = "headless Chromium is not installed (scripts/install_browser.sh installs it)"
        if os.environ.get("FEDHIVE_BROWSER_REQUIRED"):
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox will not start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,880",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


@pytest.fixture
def chromium() -> Iterator[Any]:
    driver = browser()
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(what: str, probe: Any, deadline: float) -> Any:
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def committed(driver: Any) -> int:
    found = driver.find_elements("css selector", ".run .round-counter")
    return int(found[0].get_attribute("data-committed")) if found else -1


def open_gate(gate: Path, rounds: int) -> None:
    staged = gate.with_suffix(".tmp")
    staged.write_text(str(rounds))
    os.replace(staged, gate)


def test_the_status_page_follows_a_live_run_in_a_browser(tmp_path: Path, chromium: Any) -> None:
    # Prepare: held-out and node data, a `fedhive server` with its status page on a free port,
    # two digits nodes whose training waits on a gate the test holds: the run cannot end (or run
    # ahead) before the page has shown the round it is held at, however slow the browser is
    server_data, dirs = digits.prepare_simulation(tmp_path / "data", 2, 0.5, 0)
    port = free_port()
    log = tmp_path / "server.log"
    gate = tmp_path / "gate"
    open_gate(gate, 1)
    cmd = [
        sys.executable, "-m", "fedhive.common.cli", "server", "--address", f"127.0.0.1:{port}",
        "--run-dir", str(tmp_path / "run"), "--task", DIGITS, "--eval-data", str(server_data),
        "--rounds", str(ROUNDS), "--min-nodes", "2", "--train", "steps=30", "--no-progress",
        "--insecure", "--status-port", "0",
    ]  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []
    deadline = time.monotonic() + DEADLINE_S
    with open(log, "wb") as out:
        procs.append(subprocess.Popen(cmd, stdout=out, stderr=out))
    # the nodes start beside it (they retry until it listens): their start-up overlaps its own
    node_logs = [open(tmp_path / f"n{i}.log", "wb") for i in range(2)]  # noqa: SIM115
    env = {**os.environ, GATE_ENV: str(gate)}
    for i, (d, f) in enumerate(zip(dirs, node_logs, strict=True)):
        node = [GATED if arg == DIGITS else arg for arg in node_cmd(port, i, d)]
        procs.append(subprocess.Popen(node, stdout=f, stderr=f, env=env))
    try:
        found = wait_for(
            "the status page's address", lambda: URL_LINE.search(log.read_bytes()), deadline
        )
        url = found.group(1).decode()

        # Execute: the page is opened while the run is held after round 1, then after round
        # HELD_AT, then the gate opens for the rest of the run
        chromium.get(url + "?refresh=0.25")
        first = wait_for("round 1 on the page", lambda: committed(chromium) == 1, deadline)
        open_gate(gate, HELD_AT)
        later = wait_for(
            f"round {HELD_AT} on the page", lambda: committed(chromium) == HELD_AT, deadline
        )
        pixels = wait_for(
            "the accuracy line",
            lambda: chromium.execute_script(COUNT_SERIES_PIXELS, *SERIES_RGB) > 50,
            deadline,
        )
        nodes_text = chromium.find_element("css selector", "#nodes tbody").text
        shot = tmp_path / "status-page.png"
        chromium.save_screenshot(str(shot))
        open_gate(gate, ROUNDS)
        codes = [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        open_gate(gate, ROUNDS)
        wait_all([p for p in procs if p.poll() is None], timeout=1)  # kills what still runs
        for f in node_logs:
            f.close()

    # Assert: the counter moved while the run went on, the chart has its line, the run ended well
    assert first and later and pixels
    assert nodes_text.count("connected") == 2, nodes_text
    assert shot.stat().st_size > 10_000
    assert codes == [0, 0, 0], log.read_text()[-3000:]
    if os.environ.get("FEDHIVE_UPDATE_FIGURES"):
        shutil.copyfile(shot, FIGURE)
