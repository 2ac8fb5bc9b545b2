"""``[dp]`` settings refused at the edge, each refusal naming the settings at fault."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from fedhive.common.config import ServerConfig, build_config
from fedhive.common.errors import ConfigError
from fedhive.server.app import check_strategy
from fedhive.server.privacy.central import CentralDP

CENTRAL = "[dp.central]\nnoise_multiplier = 1.0\nclip = 1.0\n"


def load(tmp_path: Path, text: str) -> ServerConfig:
    path = tmp_path / "server.toml"
    path.write_text("insecure = true\n" + text, encoding="utf-8")
    return build_config(ServerConfig, path)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[dp]\ndelta = 1e-5\n", r"\[dp\] enables no level"),
        ("[dp]\nmax_epsilon = 0\n" + CENTRAL, r"dp\.max_epsilon: Input should be greater than 0"),
        ("[dp]\ndelta = 1.5\n" + CENTRAL, r"dp\.delta: Input should be less than 1"),
        ("[dp.central]\nnoise_multiplier = 0\nclip = 1.0\n", r"dp\.central\.noise_multiplier"),
        ("[dp.central]\nnoise_multiplier = -1\nclip = 1.0\n", r"dp\.central\.noise_multiplier"),
        ("[dp.central]\nnoise_multiplier = nan\nclip = 1.0\n", r"dp\.central\.noise_multiplier"),
        ("[dp.central]\nnoise_multiplier = 1.0\nclip = 0\n", r"dp\.central\.clip"),
        ("[dp.central]\nnoise_multiplier = 1.0\n", r"dp\.central\.clip: Field required"),
        (CENTRAL + "noise = 3\n", r"dp\.central\.noise: unknown setting"),
        (CENTRAL + "adaptive = true\n", r"adaptive = true needs count_noise_std"),
        (CENTRAL + "adaptive = true\ncount_noise_std = 0.5\n", r"count_noise_std = 0\.5 must"),
        (CENTRAL + "target_quantile = 0.3\n", r"target_quantile only apply with adaptive"),
        ("min_nodes = 4\n[dp]\ndelta = 0.3\n" + CENTRAL, r"\[dp\] delta = 0\.3 is not below 1"),
        (
            'secure_aggregation = "secagg+"\n' + CENTRAL,
            r"\[dp\.central\] with secure_aggregation = 'secagg\+'.*\[dp\.distributed\]",
        ),
    ],
)
def test_bad_dp_settings_are_refused_naming_them(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load(tmp_path, text)


@pytest.mark.parametrize("strategy", ["fedmedian", "fedtrimmedavg", "krum", "bulyan"])
def test_central_dp_with_a_robust_rule_is_refused(tmp_path: Path, strategy: str) -> None:
    config = load(tmp_path, f'strategy = "{strategy}"\n' + CENTRAL)
    with pytest.raises(ConfigError, match=rf"\[dp\.central\] with strategy = '{strategy}'"):
        check_strategy(config)


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam", "fedavgm"])
def test_central_dp_wraps_a_streaming_rule(tmp_path: Path, strategy: str) -> None:
    config = load(tmp_path, f'strategy = "{strategy}"\n[dp]\nmax_epsilon = 5.0\n' + CENTRAL)
    assert isinstance(check_strategy(config), CentralDP)


def test_the_readme_example_is_a_valid_central_dp_config(tmp_path: Path) -> None:
    # Prepare: the TOML of the README's "Differential privacy" section
    text = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Central DP (node-level, on the coordinator)") :]
    match = re.search(r"```toml\n(.*?)```", section, re.S)
    assert match, "the README lost its [dp] example"

    # Execute
    config = load(tmp_path, match.group(1))

    # Assert
    assert config.dp is not None and config.dp.central is not None
    assert isinstance(check_strategy(config), CentralDP)


def test_central_dp_without_opacus_is_refused_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load(tmp_path, CENTRAL)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "opacus" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"pip install 'fedhive\[dp\]'"):
        check_strategy(config)
