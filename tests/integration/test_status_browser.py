"""The status page in a real browser: headless Chromium (Debian's package, installed by the test
command: scripts/install_browser.sh) loads the page of a live `fedhive server` process while two
node processes train the digits task; the round counter advances and the accuracy chart is drawn.
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
from tests.integration.harness import wait_all
from tests.integration.test_node_lifecycle import free_port
from tests.integration.test_resume import DIGITS, node_cmd

ROUNDS = 6
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


def test_the_status_page_follows_a_live_run_in_a_browser(tmp_path: Path, chromium: Any) -> None:
    # Prepare: held-out and node data, a `fedhive server` with its status page on a free port,
    # two digits nodes
    server_data, dirs = digits.prepare_simulation(tmp_path / "data", 2, 0.5, 0)
    port = free_port()
    log = tmp_path / "server.log"
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
    for i, (d, f) in enumerate(zip(dirs, node_logs, strict=True)):
        procs.append(subprocess.Popen(node_cmd(port, i, d), stdout=f, stderr=f))
    try:
        found = wait_for(
            "the status page's address", lambda: URL_LINE.search(log.read_bytes()), deadline
        )
        url = found.group(1).decode()

        # Execute: the page is opened while the run goes on and followed round by round
        chromium.get(url + "?refresh=0.25")
        first = wait_for("a committed round", lambda: max(committed(chromium), 0), deadline)
        later = wait_for(
            "the counter to advance", lambda: committed(chromium) >= first + 2, deadline
        )
        pixels = wait_for(
            "the accuracy line",
            lambda: chromium.execute_script(COUNT_SERIES_PIXELS, *SERIES_RGB) > 50,
            deadline,
        )
        nodes_text = chromium.find_element("css selector", "#nodes tbody").text
        shot = tmp_path / "status-page.png"
        chromium.save_screenshot(str(shot))
        codes = [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        wait_all([p for p in procs if p.poll() is None], timeout=1)  # kills what still runs
        for f in node_logs:
            f.close()

    # Assert: the counter moved while the run went on, the chart has its line, the run ended well
    assert later and pixels
    assert nodes_text.count("connected") == 2, nodes_text
    assert shot.stat().st_size > 10_000
    assert codes == [0, 0, 0], log.read_text()[-3000:]
    if os.environ.get("FEDHIVE_UPDATE_FIGURES"):
        shutil.copyfile(shot, FIGURE)
