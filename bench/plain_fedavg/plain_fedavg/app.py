"""Flower's FedAvg over the same silos and the same training as a deai-flower run.

The ServerApp reads the run spec and the initial model from the store (no chain); each
round sends ``train`` then ``evaluate`` to every node, as Flower's FedAvg does, and writes
the per-round time of each phase to ``OUTPUT_DIR/plain.json``. The ClientApp trains with
:func:`deai_flower.privacy.train_round` under the spec's DP settings on the silo's own
files (``data-path``, ``eval-data-path`` of its node config) and scores the global model
on its held-out file.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

server_app = ServerApp()
client_app = ClientApp()


def _spec_and_store(run_config: Any) -> tuple[Any, Any]:
    from deai_flower.protocol.spec import RunSpec
    from deai_flower.storage.location import open_store

    store = open_store(str(run_config["store"]))
    spec = RunSpec.from_bytes(store.get(str(run_config["spec-cid"])))
    return spec, store


class TimedFedAvg(FedAvg):
    """FedAvg that records how long each round's train and evaluate phases take."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rounds: dict[int, dict[str, float]] = {}
        self._started: dict[tuple[int, str], float] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:  # fmt: skip
        self._started[(server_round, "train")] = time.perf_counter()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Any:
        out = super().aggregate_train(server_round, replies)
        self.rounds.setdefault(server_round, {})["train"] = time.perf_counter() - self._started[(server_round, "train")]
        return out

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:  # fmt: skip
        self._started[(server_round, "evaluate")] = time.perf_counter()
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> Any:
        out = super().aggregate_evaluate(server_round, replies)
        self.rounds.setdefault(server_round, {})["evaluate"] = (
            time.perf_counter() - self._started[(server_round, "evaluate")])
        if out is not None:
            self.rounds[server_round].update({f"federated-{k}": float(v) for k, v in out.items()})
        return out


#: How often the coordinator asks the SuperLink for replies: what a deployed deai-flower
#: coordinator does (Flower's own ``send_and_receive`` asks every 3 s), so that the two
#: arms of the comparison wait for replies alike.
REPLY_POLL_S = 0.5


class PollingGrid:
    """``grid``, but ``send_and_receive`` asks for replies every ``every`` seconds."""

    def __init__(self, grid: Grid, every: float) -> None:
        self._grid, self._every = grid, every

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        pending = set(self._grid.push_messages(messages))
        end = time.monotonic() + (timeout if timeout is not None else float("inf"))
        replies: list[Message] = []
        while pending and time.monotonic() < end:
            for reply in self._grid.pull_messages(list(pending)):
                pending.discard(reply.metadata.reply_to_message_id)
                replies.append(reply)
            if pending:
                time.sleep(self._every)
        return replies


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    from deai_flower.storage import decode_arrays
    from flwr.app import Array

    spec, store = _spec_and_store(context.run_config)
    arrays = decode_arrays(store.get(str(context.run_config["initial-cid"])), max_bytes=spec.max_blob_bytes)
    nodes = 0
    deadline = time.monotonic() + 120
    while nodes < spec.rounds.min_reveals and time.monotonic() < deadline:
        nodes = len(list(grid.get_node_ids()))
        time.sleep(1.0)
    strategy = TimedFedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=nodes,
                           min_evaluate_nodes=nodes, min_available_nodes=nodes)  # fmt: skip
    started = time.perf_counter()
    strategy.start(grid=PollingGrid(grid, REPLY_POLL_S),  # type: ignore[arg-type]
                   initial_arrays=ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                   num_rounds=spec.rounds.num_rounds)
    out = Path(str(context.run_config["output-dir"]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "plain.json").write_text(json.dumps({"nodes": nodes, "rounds": strategy.rounds,
                                                "wall_seconds": time.perf_counter() - started}, indent=2))


def _silo(context: Context, spec: Any) -> Any:
    from deai_flower.participant.participant import SiloFiles

    config = context.node_config
    eval_path = Path(str(config["eval-data-path"])) if "eval-data-path" in config else None
    return SiloFiles(Path(str(config["data-path"])), eval_path).load(spec.data).checked(spec.data)


def _model(spec: Any, arrays: ArrayRecord) -> Any:
    from deai_flower.models import instantiate_model, set_arrays

    model = instantiate_model(spec.model, spec.data)
    set_arrays(model, {k: v.numpy() for k, v in arrays.items()})
    return model


@client_app.train()
def train(message: Message, context: Context) -> Message:
    import torch

    from deai_flower.models import get_arrays
    from deai_flower.privacy import PrivacyLedger, PrivacySettings, train_round
    from flwr.app import Array

    spec, _ = _spec_and_store(context.run_config)
    data = _silo(context, spec)
    p = spec.privacy
    trained = train_round(
        model=_model(spec, message.content["arrays"]), x=data.x, y=data.y,
        settings=PrivacySettings(epsilon=p.epsilon, delta=p.delta, max_grad_norm=p.max_grad_norm,
                                 accountant=p.accountant),
        ledger=PrivacyLedger(), planned_rounds=spec.rounds.num_rounds, local_epochs=spec.training.local_epochs,
        batch_size=spec.training.batch_size, learning_rate=spec.training.learning_rate,
        seed=secrets.randbits(63), device=torch.device("cpu"),
        num_threads=int(context.node_config.get("threads", 1)),
    )  # fmt: skip
    arrays = ArrayRecord({k: Array(v) for k, v in trained.arrays.items()})
    metrics = MetricRecord({"num-examples": trained.num_examples, "train-loss": trained.train_loss})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=message)


@client_app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    import torch

    from deai_flower.models import evaluate as score

    spec, _ = _spec_and_store(context.run_config)
    data = _silo(context, spec)
    x, y = (data.x_eval, data.y_eval) if data.x_eval is not None else (data.x, data.y)
    loss, accuracy = score(_model(spec, message.content["arrays"]), x, y, device=torch.device("cpu"))
    metrics = MetricRecord({"num-examples": len(y), "loss": loss, "accuracy": accuracy})
    return Message(RecordDict({"metrics": metrics}), reply_to=message)
