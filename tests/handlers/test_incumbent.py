"""KeepBetterModel with the best saver: the model already at the save path is scored first, and a new model
replaces it only when it scores at least as well; otherwise it is kept beside it as model.candidate.pt."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import torch
from ignite.engine import Engine

from vmunetv2_monai.handlers import AtomicCheckpointSaver, KeepBetterModel, loads_network


class WeightScore:
    """An 'evaluator' whose key metric is the network's mean weight, on three validation images."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.net = net
        self.data_loader = SimpleNamespace(dataset=SimpleNamespace(data=[{"image": f"/d/{i}.png"} for i in range(3)]))
        self.state = SimpleNamespace(metrics={})

    def run(self, epoch: int | None = None) -> None:
        self.state.metrics = {"val_mean_dice": float(self.net.weight.mean())}


def _net(value: float) -> torch.nn.Linear:
    net = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.constant_(net.weight, value)
    return net


def _validated(saver: AtomicCheckpointSaver, value: float) -> None:
    evaluator = Engine(lambda e, b: None)
    saver.attach(evaluator)
    evaluator.state.metrics, evaluator.state.epoch = {"val_mean_dice": value}, 1
    saver.metrics_completed(evaluator)


def test_worse_model_is_kept_beside_and_better_one_replaces(tmp_path: Path, caplog) -> None:
    path = tmp_path / "model.pt"
    torch.save(_net(0.8).state_dict(), path)
    incumbent_bytes = path.read_bytes()
    net = _net(0.1)  # the weights being trained
    saver = AtomicCheckpointSaver(tmp_path, {"model": net}, save_key_metric=True, key_metric_name="val_mean_dice")
    gate = KeepBetterModel(saver, WeightScore(net), net)
    with caplog.at_level(logging.INFO):
        assert gate.measure() == torch.tensor(0.8).item()
    assert "on the validation images [0.png, 1.png, 2.png]" in caplog.text
    assert float(net.weight.mean()) == torch.tensor(0.1).item()  # its own weights are back

    _validated(saver, 0.5)  # worse than the incumbent
    assert path.read_bytes() == incumbent_bytes
    candidate = tmp_path / "model.candidate.pt"
    assert torch.equal(torch.load(candidate, weights_only=True)["weight"], net.weight.detach())
    with caplog.at_level(logging.WARNING):
        gate.report(Engine(lambda e, b: None))
    assert "NOT replaced" in caplog.text and "model.candidate.pt" in caplog.text

    torch.nn.init.constant_(net.weight, 0.9)
    _validated(saver, 0.9)  # at least the incumbent's score
    assert torch.equal(torch.load(path, weights_only=True)["weight"], net.weight.detach())
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("model.prev-")]
    assert len(kept) == 1 and kept[0].read_bytes() == incumbent_bytes  # nothing lost
    gate.report(Engine(lambda e, b: None))
    assert not candidate.exists()  # this run's worse weights are gone once it beat the incumbent


def test_no_incumbent_or_one_that_does_not_fit_is_not_a_baseline(tmp_path: Path, caplog) -> None:
    net = _net(0.1)
    saver = AtomicCheckpointSaver(tmp_path, {"model": net}, save_key_metric=True, key_metric_name="val_mean_dice")
    gate = KeepBetterModel(saver, WeightScore(net), net)
    assert gate.measure() == float("-inf")
    torch.save(torch.nn.Linear(3, 1).state_dict(), tmp_path / "model.pt")
    with caplog.at_level(logging.WARNING):
        assert gate.measure() == float("-inf")
    assert "does not fit this network" in caplog.text
    assert float(net.weight.mean()) == torch.tensor(0.1).item()
    _validated(saver, 0.01)
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], net.weight.detach())


def test_a_resumed_run_keeps_its_baseline(tmp_path: Path) -> None:
    net = _net(0.1)
    torch.save(_net(0.3).state_dict(), tmp_path / "model.pt")
    saver = AtomicCheckpointSaver(tmp_path, {"model": net}, save_key_metric=True, key_metric_name="val_mean_dice")
    saver.load_state_dict({"best_metric": 0.5, "baseline": 0.7})
    assert KeepBetterModel(saver, WeightScore(net), net).measure() == 0.7


def test_loads_network_finds_the_stock_label_loader() -> None:
    from monai.handlers import CheckpointLoader, StatsHandler

    net = _net(0.1)
    stock = CheckpointLoader(load_path="models/model.pt", load_dict={"model": net}, strict=False)
    assert loads_network([stock, StatsHandler()]) and not loads_network([StatsHandler()])
