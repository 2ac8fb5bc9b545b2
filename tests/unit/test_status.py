"""The status page and metrics, piece by piece: settings, refusal labels, the listener's counters,
the bearer-token protection (over a real HTTP server on loopback)."""

from __future__ import annotations

import argparse
import json
import ssl
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedhive.common.config import ServerConfig, build_config
from fedhive.common.crypto import pki
from fedhive.common.errors import ConfigError
from fedhive.common.record import RoundRecord
from fedhive.common.status_config import StatusConfig
from fedhive.server.cli import add_server_args, config_from_args
from fedhive.server.status.httpd import StatusServer
from fedhive.server.status.metrics import REFUSAL_REASONS, FederationMetrics, refusal_label
from fedhive.server.status.runs import RunDirs, read_runs
from fedhive.server.status.web import StatusSources, build_app
from fedhive.server.store import RunStore

TOKEN = "s3cret-token-for-tests-0123456789"


def record(round_: int, committed: bool, refused: dict[str, str] | None = None) -> RoundRecord:
    return RoundRecord(
        event="round",
        round=round_,
        attempt=1,
        selected=["a", "b"],
        refused=refused or {},
        dropped=[],
        duration_s=0.5,
        bytes_in=1000,
        bytes_out=2000,
        time=0.0,
        reported=["a"],
        examples=10,
        committed=committed,
    )


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in the exposition")


def test_an_exposed_status_page_without_a_token_is_refused_by_name() -> None:
    with pytest.raises(ConfigError) as err:
        build_config(ServerConfig, None, {"status": {"host": "0.0.0.0", "port": 0}})

    assert "status" in str(err.value)
    assert "token_file" in str(err.value)
    assert "without protection" in str(err.value)


def test_the_cli_refuses_to_expose_the_status_page_unprotected() -> None:
    p = argparse.ArgumentParser()
    add_server_args(p)
    ns = p.parse_args(["--insecure", "--status-port", "0", "--status-host", "10.1.2.3"])

    with pytest.raises(ConfigError, match="token_file"):
        config_from_args(ns)


def test_status_settings_default_to_loopback_and_stay_off() -> None:
    p = argparse.ArgumentParser()
    add_server_args(p)

    off = config_from_args(p.parse_args(["--insecure"]))
    on = config_from_args(p.parse_args(["--insecure", "--status-port", "0"]))

    assert off.status is None
    assert on.status == StatusConfig(port=0)
    assert on.status.host == "127.0.0.1" and not on.status.exposed


def test_a_short_or_missing_token_file_is_refused(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text("abc\n")

    with pytest.raises(ConfigError, match="16 to 4096 characters"):
        StatusConfig(host="0.0.0.0", token_file=short).read_token()
    with pytest.raises(ConfigError, match="token_file"):
        StatusConfig(token_file=tmp_path / "absent").read_token()
    with pytest.raises(ValueError, match="tls_cert and tls_key"):
        StatusConfig(tls_cert=tmp_path / "c.pem")


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("declined: out of memory", "declined"),
        ("round 3: digest mismatch (payload corrupted in transit)", "digest"),
        ("update: tensor 'w' holds non-finite values (NaN or inf) at 4", "non_finite"),
        ("update: 9999 bytes exceeds the limit 100", "limit"),
        ("update: 2 tensors, the global model has 3", "shape"),
        ("upload idle for 30s: cut off", "timeout"),
        ("something nobody foresaw " + "x" * 5000, "other"),
    ],
)
def test_refusal_reasons_fold_into_a_fixed_label_set(reason: str, label: str) -> None:
    assert refusal_label(reason) == label
    assert label in REFUSAL_REASONS


def test_the_listener_counts_rounds_bytes_and_refusals() -> None:
    metrics = FederationMetrics()
    metrics.watch_nodes(lambda: 3)

    metrics.round_opened(1, "train", ["a", "b"])
    metrics.update_received(1, 1, 2, 1000)
    live = metrics.live_round()
    metrics.round_closed(record(1, True, {"b": "digest mismatch"}))
    metrics.round_closed(record(2, False))
    text = metrics.exposition().decode()

    assert live is not None and (live.round, live.received, live.selected) == (1, 1, 2)
    assert metrics.live_round() is None
    assert sample(text, "fedhive_rounds_committed_total") == 1
    assert sample(text, "fedhive_rounds_failed_total") == 1
    assert sample(text, "fedhive_bytes_received_total") == 2000
    assert sample(text, "fedhive_bytes_sent_total") == 4000
    assert sample(text, 'fedhive_updates_refused_total{reason="digest"}') == 1
    assert sample(text, 'fedhive_updates_refused_total{reason="other"}') == 0
    assert sample(text, "fedhive_connected_nodes") == 3
    assert sample(text, 'fedhive_round_duration_seconds_count{kind="train"}') == 2


@pytest.fixture
def protected(tmp_path: Path) -> Iterator[str]:
    metrics = FederationMetrics()
    sources = StatusSources(RunDirs.single(tmp_path / "run"), metrics, list, lambda: None)
    server = StatusServer(build_app(sources, token=TOKEN), StatusConfig(port=0)).start()
    try:
        yield server.url
    finally:
        server.stop()
    assert not server.thread.is_alive()


def get(url: str, headers: dict[str, str] | None = None, data: bytes | None = None) -> Any:
    request = urllib.request.Request(url, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_a_token_protects_metrics_and_the_api(protected: str) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}

    no_token = get(protected + "metrics")
    wrong = get(protected + "api/status", {"Authorization": "Bearer wrong"})
    scraped = get(protected + "metrics", bearer)
    status = get(protected + "api/status", bearer)
    page = get(protected)

    assert no_token[0] == 401 and wrong[0] == 401
    assert scraped[0] == 200 and b"fedhive_rounds_committed_total" in scraped[2]
    assert status[0] == 200 and json.loads(status[2])["runs"] == []
    assert page[0] == 200 and b"needs its bearer token" in page[2]  # the login page
    assert "default-src 'self'" in scraped[1]["content-security-policy"]


def test_a_browser_signs_in_once_and_gets_a_cookie(protected: str) -> None:
    refused = get(protected + "login", data=b"not the token")
    signed = get(protected + "login", data=TOKEN.encode())
    cookie = signed[1]["set-cookie"].split(";")[0]
    status = get(protected + "api/status", {"Cookie": cookie})

    assert refused[0] == 401
    assert signed[0] == 200 and TOKEN not in cookie and "HttpOnly" in signed[1]["set-cookie"]
    assert status[0] == 200


def test_an_exposed_page_serves_https_with_its_token(tmp_path: Path) -> None:
    # Prepare: the consortium's CA issues the page a certificate (as `fedhive certs server`)
    ca_key, ca_cert = pki.create_ca("Test Consortium")
    key, cert = pki.issue(ca_key, ca_cert, "coordinator", server=True, ips=["127.0.0.1"])
    pki.write_cert(tmp_path / "ca.crt", ca_cert)
    pki.write_cert(tmp_path / "status.crt", cert)
    pki.write_key(tmp_path / "status.key", key)
    (tmp_path / "token").write_text(TOKEN + "\n")
    config = StatusConfig(
        host="127.0.0.1",
        port=0,
        token_file=tmp_path / "token",
        tls_cert=tmp_path / "status.crt",
        tls_key=tmp_path / "status.key",
    )
    sources = StatusSources(RunDirs.single(tmp_path), FederationMetrics(), list, lambda: None)
    server = StatusServer(build_app(sources, token=config.read_token()), config).start()

    # Execute: a client that trusts only the consortium CA
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    request = urllib.request.Request(
        server.url + "metrics", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as reply:
            status, body = reply.status, reply.read()
    finally:
        server.stop()

    # Assert
    assert server.url.startswith("https://")
    assert status == 200 and b"fedhive_queue_length" in body


def test_the_readme_status_table_is_valid() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Status page and metrics") :]
    start = section.index("```toml\n") + len("```toml\n")
    block = section[start : section.index("```", start)]

    config = StatusConfig(**tomllib.loads(block)["status"])

    assert config.token_file == Path("status.token")


def test_the_api_reads_rounds_and_refusals_from_a_run_store(tmp_path: Path) -> None:
    # Prepare: a run store as the coordinator writes it: one committed round, one failed round
    store = RunStore(tmp_path / "run")
    settings = ServerConfig(rounds=5, insecure=True).model_dump(mode="json")
    store.create(settings, "run-1")
    store.append_event(record(1, True, {"n2": "declined: training failed"}))
    store.append_event(record(2, False, {"n3": "update: digest mismatch"}))
    store.close()
    metrics = FederationMetrics()
    metrics.round_opened(3, "train", ["n1", "n2"])
    sources = StatusSources(RunDirs.single(store.run_dir), metrics, list, lambda: "run-1")
    server = StatusServer(build_app(sources, token=None), StatusConfig(port=0)).start()

    # Execute
    try:
        status, _, body = get(server.url + "api/status")
    finally:
        server.stop()

    # Assert
    assert status == 200
    (run,) = json.loads(body)["runs"]
    assert (run["run_id"], run["rounds"], run["finished"]) == ("run-1", 5, False)
    assert [r["committed"] for r in run["rounds_shown"]] == [True, False]
    assert run["rounds_shown"][1]["refused"] == {"n3": "update: digest mismatch"}
    assert (run["live"]["round"], run["live"]["selected"]) == (3, 2)


def test_a_service_state_dir_lists_every_run_and_a_broken_one_with_its_error(
    tmp_path: Path,
) -> None:
    # Prepare: STATE_DIR/runs/<run_id>/ as the service keeps them; one database is garbage
    runs = tmp_path / "runs"
    for run_id in ("aaa", "bbb"):
        store = RunStore(runs / run_id)
        store.create(ServerConfig(insecure=True).model_dump(mode="json"), run_id)
        store.close()
    (runs / "ccc").mkdir()
    (runs / "ccc" / "run.sqlite").write_bytes(b"not a database")

    # Execute
    found = {run["run_id"]: run for run in read_runs(RunDirs.under(runs), 10)}

    # Assert
    assert set(found) == {"aaa", "bbb", "ccc"}
    assert found["aaa"]["rounds_shown"] == [] and "error" not in found["aaa"]
    assert "error" in found["ccc"]


def test_a_port_in_use_is_a_clear_error_and_leaves_no_thread(tmp_path: Path) -> None:
    sources = StatusSources(RunDirs.single(tmp_path), FederationMetrics(), list, lambda: None)
    first = StatusServer(build_app(sources, token=None), StatusConfig(port=0)).start()
    second = StatusServer(build_app(sources, token=None), StatusConfig(port=first.port))

    try:
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            second.start()
    finally:
        first.stop()

    assert not second.thread.is_alive() and not first.thread.is_alive()


def test_status_without_its_extra_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: [status] on, and its libraries not importable (as without fedhive[status])
    import sys

    from fedhive.server.status import status_part

    config = ServerConfig(task="fedhive.common.tasks.constant:make_task", status=StatusConfig())
    monkeypatch.setitem(sys.modules, "fedhive.server.status.wiring", None)

    # Execute / Assert
    with pytest.raises(ConfigError, match=r"pip install 'fedhive\[status\]'"):
        status_part(config)
