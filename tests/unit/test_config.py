"""fedhive.common.config: TOML + flags -> frozen, validated settings; errors name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from fedhive.common.config import ClientConfig, ServerConfig, build_config
from fedhive.common.errors import ConfigError
from fedhive.common.wire.chunks import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE


def write(tmp_path: Path, text: str, name: str = "fedhive.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_server_config_from_toml(tmp_path):
    path = write(
        tmp_path,
        """
        rounds = 3
        fraction = 0.5
        run_dir = "runs/x"
        chunk_size = 4096
        task = "pkg.mod:factory"
        [task_args]
        alpha = 0.5
        [train]
        lr = 0.1
        epochs = 2
        """,
    )

    config = build_config(ServerConfig, path)

    assert config.rounds == 3
    assert config.fraction == 0.5
    assert config.run_dir == Path("runs/x")
    assert config.chunk_size == 4096
    assert config.task == "pkg.mod:factory"
    assert config.task_args == {"alpha": 0.5}
    assert config.train == {"lr": 0.1, "epochs": 2}


def test_defaults_without_a_file():
    server = build_config(ServerConfig)
    client = build_config(ClientConfig)

    assert server.rounds == 10
    assert server.chunk_size == DEFAULT_CHUNK_SIZE
    assert client.server == "127.0.0.1:8765"
    assert client.name  # the host name


@pytest.mark.parametrize(
    ("model", "text", "field"),
    [
        (ServerConfig, "roudns = 3", "roudns"),
        (ServerConfig, "rounds = 3\nchunksize = 4096", "chunksize"),
        (ServerConfig, "[trian]\nlr = 0.1", "trian"),
        (ClientConfig, 'sever = "host:1"', "sever"),
        (ClientConfig, "backoff_max = 3.0", "backoff_max"),
    ],
)
def test_misspelled_key_names_the_field_as_unknown(tmp_path, model, text, field):
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as excinfo:
        build_config(model, path)

    message = str(excinfo.value)
    assert f"{field}: unknown setting" in message
    assert str(path) in message


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("rounds = 0", "rounds"),
        ("rounds = -4", "rounds"),
        ("fraction = 1.5", "fraction"),
        ("fraction = 0.0", "fraction"),
        ("chunk_size = 1023", "chunk_size"),
        (f"chunk_size = {MAX_CHUNK_SIZE + 1}", "chunk_size"),
        ("min_nodes = 0", "min_nodes"),
        ("round_timeout_s = 0", "round_timeout_s"),
        ("max_workers = 3", "max_workers"),
        ('on_failed_round = "ignore"', "on_failed_round"),
        ('rounds = "many"', "rounds"),
        ("spool_memory_bytes = -1", "spool_memory_bytes"),
        ("spool_wait_s = -0.5", "spool_wait_s"),
        ("receive_window_bytes = 1000", "receive_window_bytes"),
        ("receive_window_bytes = 4294967296", "receive_window_bytes"),
    ],
)
def test_out_of_range_server_value_names_the_field(tmp_path, text, field):
    path = write(tmp_path, text)

    with pytest.raises(ConfigError, match=rf"\n  {field}: "):
        build_config(ServerConfig, path)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"backoff_initial_s": 0}, "backoff_initial_s"),
        ({"max_connect_attempts": 0}, "max_connect_attempts"),
        ({"name": ""}, "name"),
        ({"poll_wait_s": -1.0}, "poll_wait_s"),
    ],
)
def test_out_of_range_client_value_names_the_field(overrides, field):
    with pytest.raises(ConfigError, match=rf"invalid configuration \(flags\):\n  {field}: "):
        build_config(ClientConfig, None, overrides)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("heartbeat_interval_s = 10.0\nheartbeat_timeout_s = 5.0", "heartbeat_timeout_s"),
        ("min_nodes = 2\nmin_updates = 3", "min_updates (3) cannot exceed min_nodes (2)"),
        ("max_workers = 8\nrpc_reserve = 8", "rpc_reserve (8) must leave stream slots"),
        ("min_nodes = 5\nmax_registered_nodes = 4", "max_registered_nodes (4) is below min_nodes"),
        ("upload_idle_timeout_s = nan", "upload_idle_timeout_s"),
        ("header_timeout_s = inf", "header_timeout_s"),
        ("max_node_examples = 0", "max_node_examples"),
    ],
)
def test_inconsistent_server_values_are_named(tmp_path, text, words):
    path = write(tmp_path, text)

    with pytest.raises(ConfigError, match=r"invalid configuration") as excinfo:
        build_config(ServerConfig, path)

    assert words in str(excinfo.value)


def test_backoff_bounds_are_checked_against_each_other():
    with pytest.raises(ConfigError, match="backoff_max_s must be >= backoff_initial_s"):
        build_config(ClientConfig, None, {"backoff_initial_s": 5.0, "backoff_max_s": 1.0})


@pytest.mark.parametrize("task", ["nocolon", "pkg.mod:", ":factory", ""])
@pytest.mark.parametrize("model", [ServerConfig, ClientConfig])
def test_bad_task_path_is_refused(model, task):
    with pytest.raises(ConfigError, match=r"task must look like 'package\.module:factory'") as exc:
        build_config(model, None, {"task": task})

    assert repr(task) in str(exc.value)


def test_invalid_toml_is_a_config_error(tmp_path):
    path = write(tmp_path, "rounds = [\n")

    with pytest.raises(ConfigError, match="is not valid TOML"):
        build_config(ServerConfig, path)


def test_missing_file_is_a_config_error(tmp_path):
    path = tmp_path / "absent.toml"

    with pytest.raises(ConfigError, match="config file not found") as excinfo:
        build_config(ServerConfig, path)

    assert str(path) in str(excinfo.value)


def test_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe rounds = 3\n")

    with pytest.raises(ConfigError):
        build_config(ServerConfig, path)


def test_directory_instead_of_a_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        build_config(ServerConfig, tmp_path)


def test_overrides_replace_file_values_but_none_does_not(tmp_path):
    path = write(tmp_path, 'rounds = 7\nseed = 3\naddress = "0.0.0.0:9000"')

    config = build_config(ServerConfig, path, {"rounds": None, "seed": 11, "fraction": None})

    assert config.rounds == 7
    assert config.seed == 11
    assert config.fraction == 1.0
    assert config.address == "0.0.0.0:9000"


def test_none_override_does_not_clear_a_default():
    config = build_config(ClientConfig, None, {"server": None, "poll_wait_s": None})

    assert config.server == "127.0.0.1:8765"
    assert config.poll_wait_s == 30.0


def test_misspelled_override_is_refused_too():
    with pytest.raises(ConfigError, match=r"\(flags\):\n  round: unknown setting"):
        build_config(ServerConfig, None, {"round": 3})


@pytest.mark.parametrize(
    ("model", "field", "value"),
    [(ServerConfig, "rounds", 99), (ServerConfig, "task", "a:b"), (ClientConfig, "server", "x:1")],
)
def test_configs_are_frozen(model, field, value):
    config = build_config(model)
    before = getattr(config, field)

    with pytest.raises(ValidationError, match="frozen"):
        setattr(config, field, value)

    assert getattr(config, field) == before


def test_secure_aggregation_is_off_by_default_and_validated():
    # Prepare / Execute
    plain = build_config(ServerConfig)
    secure = build_config(ServerConfig, overrides={"secure_aggregation": "secagg+"})
    # Assert
    assert plain.secure_aggregation == "none"
    assert secure.secagg_quantization().levels == (1 << 16) - 1


def test_secure_aggregation_that_can_overflow_is_refused_with_the_bound():
    overrides = {"secure_aggregation": "secagg+", "min_nodes": 65, "secagg_max_weight": 1024}
    with pytest.raises(ConfigError, match=r"can overflow.*nodes \(65\).*2\^32"):
        build_config(ServerConfig, overrides=overrides)


@pytest.mark.parametrize(
    "key, value", [("secure_aggregation", "secagg"), ("secagg_bits", 32), ("secagg_clip", 0.0)]
)
def test_bad_secure_aggregation_settings_name_the_field(key, value):
    with pytest.raises(ConfigError, match=key):
        build_config(ServerConfig, overrides={key: value})


def test_streams_get_the_call_slots_less_the_reserve():
    assert ServerConfig().stream_budget() == 256 - 32
    assert ServerConfig(max_workers=8).stream_budget() == 6
    assert ServerConfig(max_workers=16, rpc_reserve=4).stream_budget() == 12
