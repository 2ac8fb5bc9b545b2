"""`fedhive <command> --help`: every flag explained, with its default; no reStructuredText."""

from __future__ import annotations

import re

import pytest

from fedhive.common.cli import COMMANDS, main
from fedhive.common.config import ClientConfig, ServerConfig

CERTS_ACTIONS = ("init-ca", "server", "node", "admin", "list", "revoke", "bootstrap")
RUN_ACTIONS = ("submit", "list", "status", "stop")
ALL = (
    [[name] for name in COMMANDS]
    + [["certs", action] for action in CERTS_ACTIONS]
    + [["run", action] for action in RUN_ACTIONS]
)
ALIASES = {
    "data_dir": "--data",
    "task_args": "--task-arg",
    "strategy_args": "--strategy-arg",
    "allowed_nodes": "--allow-node",
    "progress": "--no-progress",
}
RST = re.compile(r"``|:(func|class|mod|meth|attr):`|^\s*::\s*$", re.M)


def help_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def entries(text: str) -> dict[str, str]:
    """Argument list entry (its invocation, e.g. "--rounds ROUNDS") -> its help text."""
    out: dict[str, str] = {}
    section = False
    current = None
    for line in text.splitlines():
        if line and not line.startswith(" "):
            section = line in ("options:", "positional arguments:")
            current = None
            continue
        if not section or not line.strip():
            continue
        if re.match(r"  \S", line):
            invocation, _, rest = re.split(r"(\s{2,}|$)", line.strip(), maxsplit=1)
            current = invocation
            out[current] = rest.strip()
        elif current is not None:
            out[current] = (out[current] + " " + line.strip()).strip()
    return out


def required(text: str) -> set[str]:
    usage = text.split("\n\n", 1)[0]
    return set(re.findall(r"(?<!\[)(--[\w-]+)\s+[A-Z]", usage))


@pytest.mark.parametrize("argv", ALL, ids=" ".join)
def test_every_flag_has_a_help_text_and_a_default(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_of(argv, capsys)
    items = entries(text)
    must = required(text)

    assert items, text
    undocumented = [inv for inv, help_ in items.items() if not help_]
    assert not undocumented, f"fedhive {' '.join(argv)}: no help for {undocumented}"
    takes_value = [inv for inv in items if re.match(r"--[\w-]+ \S", inv)]
    silent = [
        inv for inv in takes_value if "default" not in items[inv] and inv.split()[0] not in must
    ]
    assert not silent, f"fedhive {' '.join(argv)}: no default said for {silent}"
    assert not RST.search(text), f"reStructuredText markup in fedhive {' '.join(argv)} --help"


def test_simulate_shows_its_own_address_and_no_flag_it_ignores(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = help_of(["simulate"], capsys)

    assert "127.0.0.1:0" in text
    for flag in ("--resume", "--tls-dir", "--tls-cert", "--tls-key", "--tls-ca", "--crl"):
        assert flag not in text


def test_prepare_takes_the_split_options_of_simulate(capsys: pytest.CaptureFixture[str]) -> None:
    simulate = entries(help_of(["simulate"], capsys))
    prepare = entries(help_of(["prepare"], capsys))

    for flag in ("--alpha ALPHA", "--iid", "--shards K", "--seed SEED"):
        assert flag in simulate and flag in prepare


@pytest.mark.parametrize(
    ("command", "model", "toml_only"),
    [
        ("server", ServerConfig, ("heartbeat_timeout_s", "secure_aggregation", "spool_dir")),
        ("client", ClientConfig, ("poll_wait_s", "backoff_initial_s", "identity_cert")),
    ],
)
def test_help_names_the_settings_only_the_toml_file_sets(
    command: str,
    model: type[ServerConfig] | type[ClientConfig],
    toml_only: tuple[str, ...],
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = help_of([command], capsys)
    epilog = " ".join(text[text.index("Settings only in the TOML file") :].split())
    flags = " ".join(entries(text))

    for name in toml_only:
        assert f"{name} (" in epilog
    for name in model.model_fields:  # every setting: a flag, or named as TOML-only
        flag = ALIASES.get(name, "--" + name.removesuffix("_s").replace("_", "-"))
        assert flag in flags or f"{name} (" in epilog, name
