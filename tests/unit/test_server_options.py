"""The coordinator's gRPC server options."""

from __future__ import annotations

from pathlib import Path

from fedhive.common.config import ServerConfig
from fedhive.server.app import grpc_options


def config(**overrides: object) -> ServerConfig:
    base: dict[str, object] = {"run_dir": Path("run"), "task": "x.y:z", "insecure": True}
    return ServerConfig(**{**base, **overrides})


def test_a_fixed_receive_window_turns_window_auto_tuning_off():
    options = dict(grpc_options(config(receive_window_bytes=1 << 20)))

    assert options["grpc.http2.bdp_probe"] == 0
    assert options["grpc.http2.lookahead_bytes"] == 1 << 20


def test_default_receive_window_is_fixed_at_4_mib():
    options = dict(grpc_options(config()))

    assert options["grpc.http2.lookahead_bytes"] == 4 << 20


def test_no_receive_window_leaves_grpc_auto_tuning_on():
    options = dict(grpc_options(config(receive_window_bytes=None)))

    assert "grpc.http2.bdp_probe" not in options
    assert "grpc.http2.lookahead_bytes" not in options
