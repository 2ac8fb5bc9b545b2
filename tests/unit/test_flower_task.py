"""The Flower adapter (fedhive.common.tasks.flower) in-process, on Flower apps written as Flower's
documentation writes them (tests/flower_apps), plus apps it must refuse (defined below)."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedhive.common.api.task import TaskContext, exchanged_state
from fedhive.common.config import FLOWER_TASK, ClientConfig
from fedhive.common.errors import ConfigError, TaskError
from fedhive.common.tasks import flower
from tests.flower_apps.task import Net

with warnings.catch_warnings():  # flwr's own imports warn (click deprecations): not ours
    warnings.simplefilter("ignore", DeprecationWarning)
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

HERE = "tests.unit.test_flower_task"
MESSAGE_APP = "tests.flower_apps.client_app:app"
NUMPY_APP = "tests.flower_apps.numpy_client:app"
CLIENT_FN = "tests.flower_apps.numpy_client:client_fn"
INIT = "tests.flower_apps.task:Net"
CONFIG = {"round": 1, "evaluate": True, "lr": 0.05, "local-epochs": 1}


def node_task(app: str, **args: Any) -> flower.FlowerTask:
    return flower.make_task(
        TaskContext(
            role="node",
            args={"app": app, "init": INIT, "partition-id": 0, "num-partitions": 4, **args},
        )
    )


def snapshot(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.clone() for name, t in state.items()}


# ---------------------------------------------------------------- apps the adapter must refuse

query_app = ClientApp()


@query_app.train()
def _train(msg: Message, context: Context) -> Message:
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)


@query_app.query()
def _query(msg: Message, context: Context) -> Message:
    return msg


def _mod(msg: Message, context: Context, call_next: Any) -> Message:
    return call_next(msg, context)  # type: ignore[no-any-return]


mods_app = ClientApp(mods=[_mod])
custom_app = ClientApp()


@custom_app.train("finetune")
def _finetune(msg: Message, context: Context) -> Message:
    return msg


no_count_app = ClientApp()


@no_count_app.train()
def _no_count(msg: Message, context: Context) -> Message:
    content = RecordDict({"arrays": msg.content["arrays"], "metrics": MetricRecord({"loss": 1.0})})
    return Message(content, reply_to=msg)


wrong_shape_app = ClientApp()


@wrong_shape_app.train()
def _wrong_shape(msg: Message, context: Context) -> Message:
    arrays = [a * 0 for a in msg.content["arrays"].to_numpy_ndarrays()]
    arrays[0] = np.zeros(3, dtype=np.float32)
    metrics = MetricRecord({"num-examples": 5})
    return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics}), reply_to=msg)


def initial_list() -> list[np.ndarray]:
    return [np.ones((2, 3), dtype=np.float32), np.zeros(4, dtype=np.float64)]


# ---------------------------------------------------------------- the Message API app


def test_message_api_app_trains_rounds_with_its_context() -> None:
    # Prepare: a node serving the unchanged ClientApp; its model as the coordinator would send it
    task = node_task(MESSAGE_APP)
    model = task.build_model()
    state = exchanged_state(model, task)
    before = snapshot(state)

    # Execute: three rounds
    fits = [task.fit(model, {**CONFIG, "round": r}) for r in (1, 2, 3)]

    # Assert: the reply's num-examples is the count, its numbers the metrics, server-round the
    # round; context.state survived across rounds; the model holds the app's trained arrays
    assert [f.num_examples for f in fits] == [360] * 3  # 80% of partition 0's 450 digits
    assert [f.metrics["server-round"] for f in fits] == [1.0, 2.0, 3.0]
    assert [f.metrics["rounds-trained"] for f in fits] == [1.0, 2.0, 3.0]
    assert "num-examples" not in fits[0].metrics
    assert fits[2].metrics["train_loss"] < fits[0].metrics["train_loss"]
    assert list(state) == list(Net().state_dict())  # the names the app loads by
    assert any(not torch.equal(state[n], before[n]) for n in state)
    assert task.context.run_config == {"lr": 0.05, "local-epochs": 1}


def test_message_api_evaluate_is_federated_evaluation() -> None:
    # Prepare
    task = node_task(MESSAGE_APP)
    model = task.build_model()
    before = snapshot(exchanged_state(model, task))

    # Execute
    result = task.evaluate(model, CONFIG)

    # Assert: the app's metrics and count; evaluating leaves the model alone
    assert result is not None and result.num_examples > 0
    assert set(result.metrics) == {"eval_loss", "eval_acc"}
    after = exchanged_state(model, task)
    assert all(torch.equal(after[n], before[n]) for n in before)


# ---------------------------------------------------------------- the legacy NumPyClient


@pytest.mark.parametrize("app", [NUMPY_APP, CLIENT_FN], ids=["ClientApp(client_fn)", "client_fn"])
def test_legacy_numpy_client_fits_and_evaluates(app: str) -> None:
    # Prepare
    task = node_task(app)
    model = task.build_model()
    state = exchanged_state(model, task)
    before = snapshot(state)

    # Execute
    fit = task.fit(model, CONFIG)
    result = task.evaluate(model, CONFIG)

    # Assert: FitRes / EvaluateRes mapped; loss joins the evaluation metrics
    assert task.legacy
    assert fit.num_examples > 0 and set(fit.metrics) == {"train_loss"}
    assert any(not torch.equal(state[n], before[n]) for n in state)
    assert result is not None and result.num_examples > 0
    assert set(result.metrics) == {"loss", "accuracy"}


# ---------------------------------------------------------------- initial model, refusals


def test_initial_model_from_a_list_travels_under_array_record_names() -> None:
    # Prepare / Execute: the coordinator's side (no app)
    task = flower.make_task(TaskContext(role="server", args={"init": f"{HERE}:initial_list"}))
    state = exchanged_state(task.build_model(), task)

    # Assert: names "0", "1" as ArrayRecord.from_numpy_ndarrays gives them; dtypes kept
    assert list(state) == ["0", "1"]
    assert state["0"].dtype == torch.float32 and state["1"].dtype == torch.float64
    assert task.evaluate(task.build_model(), CONFIG) is None


def test_initial_model_is_built_under_the_runs_seed() -> None:
    # Prepare: what a Flower ServerApp builds with torch.manual_seed(7); Net()
    torch.manual_seed(7)
    served = {n: t.clone() for n, t in Net().state_dict().items()}
    torch.manual_seed(123)
    outside = torch.rand(4)  # the caller's generator, to see that it is left where it was
    torch.manual_seed(123)

    # Execute: the coordinator's initial model with seed 7 (`fedhive server --seed 7`), twice
    builds = [
        exchanged_state(task.build_model(), task)
        for task in (
            flower.make_task(TaskContext(role="server", seed=7, args={"init": INIT}))
            for _ in range(2)
        )
    ]

    # Assert: the ServerApp's weights, every time; the caller's generator untouched
    for state in builds:
        assert all(torch.equal(state[n], served[n]) for n in served)
    assert torch.equal(torch.rand(4), outside)


def test_initial_model_from_a_safetensors_file(tmp_path: Path) -> None:
    # Prepare: a checkpoint as fedhive writes one (the model's order), of a seeded Net
    from fedhive.common.data.safetensors_io import write_safetensors
    from fedhive.common.wire.tensors import spec_of, tensor_bytes

    torch.manual_seed(3)
    weights = Net().state_dict()
    path = tmp_path / "round-0000.safetensors"
    specs = [spec_of(n, t) for n, t in weights.items()]
    write_safetensors(path, specs, [tensor_bytes(t) for t in weights.values()])

    # Execute: the coordinator's initial model from the file; a node serving the app from it
    server = flower.make_task(TaskContext(role="server", args={"init": str(path)}))
    state = exchanged_state(server.build_model(), server)
    node = node_task(MESSAGE_APP, init=str(path))
    model = node.build_model()
    fit = node.fit(model, CONFIG)

    # Assert: the file's tensors, names and order; the app trains from them
    assert list(state) == list(weights)
    assert all(torch.equal(state[n], weights[n]) for n in weights)
    assert fit.num_examples == 360
    assert list(exchanged_state(model, node)) == list(weights)


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "cannot read the initial model"), (b"\x04\x00", "not a safetensors file")],
    ids=["missing", "not safetensors"],
)
def test_initial_model_file_that_cannot_be_read_is_refused(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "init.safetensors"
    if content is not None:
        path.write_bytes(content)
    task = flower.make_task(TaskContext(role="server", args={"init": str(path)}))
    with pytest.raises(TaskError, match=message):
        task.build_model()


@pytest.mark.parametrize(
    ("app", "message"),
    [
        (f"{HERE}:query_app", "query.default are not supported"),
        (f"{HERE}:mods_app", r"mods \(_mod\) are not supported"),
        (f"{HERE}:custom_app", "train.finetune are not supported"),
        (f"{HERE}:CONFIG", "neither a Flower ClientApp nor a client_fn"),
        ("tests.flower_apps.nowhere:app", "cannot import Flower app module"),
    ],
    ids=["query handler", "mods", "custom message type", "not an app", "no module"],
)
def test_what_does_not_map_is_refused_at_start(app: str, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        node_task(app)


def test_missing_init_is_refused_with_what_to_give() -> None:
    with pytest.raises(TaskError, match=r"init=package\.module:name"):
        flower.make_task(TaskContext(role="node", args={"app": MESSAGE_APP}))


def test_reply_without_num_examples_is_refused() -> None:
    task = node_task(f"{HERE}:no_count_app")
    with pytest.raises(TaskError, match="no 'num-examples'"):
        task.fit(task.build_model(), CONFIG)


def test_reply_of_the_wrong_shape_is_refused_and_leaves_the_model_alone() -> None:
    # Prepare
    task = node_task(f"{HERE}:wrong_shape_app")
    model = task.build_model()
    before = snapshot(exchanged_state(model, task))

    # Execute
    with pytest.raises(TaskError, match=r"has shape \(3,\)"):
        task.fit(model, CONFIG)

    # Assert: nothing was copied in (every array checked before any is written)
    after = exchanged_state(model, task)
    assert all(torch.equal(after[n], before[n]) for n in before)


# ---------------------------------------------------------------- configuration


def test_flower_app_setting_makes_the_flower_task() -> None:
    config = ClientConfig(flower_app=MESSAGE_APP, task_args={"init": INIT}, insecure=True)
    assert config.task == FLOWER_TASK
    assert config.task_args == {"init": INIT, "app": MESSAGE_APP}


def test_flower_app_and_another_task_conflict() -> None:
    with pytest.raises(ValueError, match="flower_app runs the task"):
        ClientConfig(
            flower_app=MESSAGE_APP, task="fedhive.common.tasks.digits:make_task", insecure=True
        )


def test_fedhive_imports_without_flwr_and_the_flower_task_says_how_to_get_it() -> None:
    # Prepare: flwr made unimportable in a fresh interpreter
    code = (
        "import sys; sys.modules['flwr'] = None\n"
        "import fedhive.common.config, fedhive.client.node, fedhive.server.app\n"
        "from fedhive.common.api.task import TaskContext\n"
        "from fedhive.common.tasks import flower\n"
        "try:\n"
        "    flower.make_task(TaskContext(role='server', args={'init': 'x:y'})).build_model()\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )

    # Execute
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    # Assert
    assert "TaskError" in out.stdout and "pip install 'fedhive[flower]'" in out.stdout


def test_config_error_type_is_reported_by_build_config() -> None:
    from fedhive.common.config import build_config

    with pytest.raises(ConfigError, match="flower_app must look like"):
        build_config(ClientConfig, None, {"flower_app": "no-colon", "insecure": True})


def test_simulate_without_init_stops_with_the_task_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    from fedhive.server import simulate

    argv = ["--flower-app", MESSAGE_APP, "--nodes", "1", "--rounds", "1", "--insecure"]

    # Execute
    code = simulate.main([*argv, "--workdir", str(tmp_path), "--no-progress"])

    # Assert: exit 2 and the task's own message, no traceback, no node started
    assert code == 2
    assert "init=package.module:name" in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()


def test_simulated_flower_nodes_get_their_partition() -> None:
    from fedhive.server.simulate import flower_node_args

    assert flower_node_args(MESSAGE_APP, 2, 4) == [
        f"app={MESSAGE_APP}",
        "partition-id=2",
        "num-partitions=4",
    ]
    assert flower_node_args(None, 2, 4) == []


bad_count_app = ClientApp()


@bad_count_app.train()
def _bad_count(msg: Message, context: Context) -> Message:
    count = context.node_config["claim"]
    content = RecordDict(
        {"arrays": msg.content["arrays"], "metrics": MetricRecord({"num-examples": count})}
    )
    return Message(content, reply_to=msg)


@pytest.mark.parametrize("claim", [-5, 2.5, float("inf"), float("nan")])
def test_reply_with_a_count_that_is_not_a_whole_number_is_refused(claim: float) -> None:
    task = node_task(f"{HERE}:bad_count_app", claim=claim)
    with pytest.raises(TaskError, match="num-examples must be a whole number >= 0"):
        task.fit(task.build_model(), CONFIG)


def test_flower_app_from_a_toml_file(tmp_path: Path) -> None:
    # Prepare
    from fedhive.common.config import build_config

    toml = tmp_path / "node.toml"
    toml.write_text(
        f'flower_app = "{MESSAGE_APP}"\ninsecure = true\n'
        f'[task_args]\ninit = "{INIT}"\npartition-id = 1\n'
    )

    # Execute
    config = build_config(ClientConfig, toml)

    # Assert
    assert config.task == FLOWER_TASK
    assert config.task_args == {"init": INIT, "partition-id": 1, "app": MESSAGE_APP}
