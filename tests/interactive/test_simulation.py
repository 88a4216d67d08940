"""``ClickSimulation`` inside MONAI's real Ignite engines (a tiny VMUNetV2 with 5 input channels), and
``init_network``: the interactive model starts out computing exactly what the automatic one does."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.inferers import SimpleInferer
from torch import nn

from vmunetv2_monai import VMUNetV2
from vmunetv2_monai.interactive import ClickSimulation, init_network, next_click, render_clicks, simulation

TINY = {"depths": (1, 1, 1, 1), "dims": 16, "d_state": 4, "mid_channels": 8, "drop_path_rate": 0.0}
SIZE = (32, 32)
SIGMA = 2.0


class ClickResponsive(nn.Module):
    """A tiny VMUNetV2 (5 input channels) whose logits also follow the click channels strongly, as a trained
    interactive model's do: each click flips a disc around it, so the next round's error region (and click) moves
    elsewhere and every click is a distinct bump."""

    def __init__(self) -> None:
        super().__init__()
        self.net = VMUNetV2(spatial_dims=2, in_channels=5, out_channels=1, deep_supervision=False, **TINY)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.01 * self.net(x) - 4.0 + 12.0 * (x[:, 3:4] - x[:, 4:5])


def _samples() -> list[dict[str, torch.Tensor]]:
    """Three 32x32 images (RGB noise + 2 zero click channels) with two or three separate lesions each."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: SIZE[0], : SIZE[1]]
    blobs = [[(8, 8, 6), (24, 22, 4)], [(10, 22, 5), (24, 8, 5), (26, 26, 3)], [(16, 16, 8), (4, 28, 2)]]
    out = []
    for discs in blobs:
        label = np.zeros(SIZE, bool)
        for cy, cx, r in discs:
            label |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        image = np.zeros((5, *SIZE), np.float32)
        image[:3] = rng.random((3, *SIZE))
        out.append({"image": torch.from_numpy(image), "label": torch.from_numpy(label[None].astype(np.float32))})
    return out


def _loader() -> DataLoader:
    return DataLoader(Dataset(_samples()), batch_size=3, shuffle=False, num_workers=0)


def _record_batches(engine: Any) -> list[dict[str, torch.Tensor]]:
    """Copies of ``engine.state.batch`` after each iteration (what the network was trained / scored on; MONAI's
    engines decollate it into a list of samples by then, stacked back here)."""
    seen: list[dict[str, torch.Tensor]] = []

    @engine.on(Events.ITERATION_COMPLETED)
    def _keep(e: Any) -> None:
        batch = e.state.batch
        if isinstance(batch, list):
            batch = {k: torch.stack([torch.as_tensor(s[k]) for s in batch]) for k in ("image", "label")}
        seen.append({k: torch.as_tensor(batch[k]).detach().clone() for k in ("image", "label")})

    return seen


def _record_renders(monkeypatch: pytest.MonkeyPatch) -> list[list[list[int]]]:
    """Every click list ``ClickSimulation`` renders (the last one of a sample and kind holds all its clicks)."""
    calls: list[list[list[int]]] = []

    def spy(clicks, *args, **kwargs):
        calls.append([list(p) for p in clicks])
        return render_clicks(clicks, *args, **kwargs)

    monkeypatch.setattr(simulation, "render_clicks", spy)
    return calls


def _reference_clicks(network: nn.Module, batch: dict[str, torch.Tensor], rounds: int) -> list[dict[str, list]]:
    """The benchmark annotator, computed here independently: ``rounds`` times, predict with the clicks so far and
    click at the interior point of each sample's largest error region."""
    image = batch["image"].clone()
    image[:, -2:] = 0
    truth = batch["label"][:, 0].numpy() > 0.5
    clicks = [{"foreground": [], "background": []} for _ in range(len(image))]
    network.eval()
    for _ in range(rounds):
        with torch.no_grad():
            pred = network(image)[:, 0].numpy() > 0
        for b in range(len(image)):
            click = next_click(pred[b], truth[b])
            assert click is not None, "the reference prediction is already perfect: the test would prove little"
            kind, point = click
            clicks[b][kind].append(point)
            image[b, 3 if kind == "foreground" else 4] = render_clicks(clicks[b][kind], SIZE, SIZE, SIGMA)
    return clicks


@pytest.mark.parametrize("rounds", [1, 3])
def test_evaluation_puts_exactly_rounds_clicks_at_the_annotator_points(
    rounds: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    network = ClickResponsive().eval()
    first = next(iter(_loader()))
    expected = _reference_clicks(network, first, rounds)
    renders = _record_renders(monkeypatch)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=_loader(), network=network, inferer=SimpleInferer(),
        iteration_update=ClickSimulation(SIZE, rounds=rounds, sigma=SIGMA, train=False),
    )
    seen = _record_batches(evaluator)
    with caplog.at_level(logging.INFO, logger=simulation.__name__):
        evaluator.run()
    assert len(seen) == 1
    assert "simulated clicks (validation): " in caplog.text and "clicks on a batch of 3" in caplog.text
    image = seen[0]["image"]
    assert torch.equal(image[:, :3], first["image"][:, :3]), "the image channels must not change"
    assert len(renders) == 3 * rounds  # one render per sample and click
    for b, clicks in enumerate(expected):
        assert len(clicks["foreground"]) + len(clicks["background"]) == rounds
        for channel, kind in ((3, "foreground"), (4, "background")):
            want = render_clicks(clicks[kind], SIZE, SIZE, SIGMA)
            torch.testing.assert_close(image[b, channel], want)
            for point in clicks[kind]:  # a bump of height 1 at each click
                assert float(image[b, channel][tuple(point)]) == pytest.approx(1.0)
            # a bump at each click and nowhere else: the channel's local maxima of height 1 are the clicks
            peaks = {tuple(int(c) for c in p) for p in torch.nonzero(image[b, channel] > 1 - 1e-6).tolist()}
            assert peaks == {tuple(p) for p in clicks[kind]}
    if rounds > 1:  # distinct clicks: the peak check above counted every one of them
        assert all(len({tuple(p) for k in c.values() for p in k}) == rounds for c in expected)


def test_training_with_auto_probability_1_puts_no_clicks(monkeypatch: pytest.MonkeyPatch) -> None:
    network = ClickResponsive()
    renders = _record_renders(monkeypatch)
    forwards = []
    network.register_forward_hook(lambda *args: forwards.append(1))
    samples = _samples()
    for s in samples:  # stale guidance in the data must be cleared, not trained on
        s["image"][3:] = 1.0
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=2, train_data_loader=DataLoader(Dataset(samples), batch_size=3),
        network=network, optimizer=torch.optim.SGD(network.parameters(), lr=1e-3), loss_function=nn.BCEWithLogitsLoss(),
        inferer=SimpleInferer(), iteration_update=ClickSimulation(SIZE, rounds=3, auto_probability=1.0, sigma=SIGMA),
    )
    seen = _record_batches(trainer)
    trainer.run()
    assert len(seen) == 2 and renders == []
    assert len(forwards) == 2, "no simulation forward passes: only the training step's own"
    for batch in seen:
        assert batch["image"][:, 3:].abs().sum() == 0
        assert batch["image"][:, :3].abs().sum() > 0
    output = trainer.state.output
    assert np.isfinite(float((output[0] if isinstance(output, list) else output)["loss"]))


def test_training_with_auto_probability_0_clicks_inside_the_error_regions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training clicks: 1 to rounds per batch (the same count for each sample), each inside the truth for a
    foreground click and outside it for a background click."""
    network = ClickResponsive()
    renders = _record_renders(monkeypatch)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=3, train_data_loader=_loader(), network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=1e-3), loss_function=nn.BCEWithLogitsLoss(),
        inferer=SimpleInferer(), iteration_update=ClickSimulation(SIZE, rounds=3, auto_probability=0.0, sigma=SIGMA),
    )
    seen = _record_batches(trainer)
    trainer.run()
    assert len(seen) == 3 and 3 <= len(renders) <= 3 * 3 * 3
    for batch in seen:
        truth = batch["label"][:, 0] > 0.5
        fg = batch["image"][:, 3] > 1 - 1e-6
        bg = batch["image"][:, 4] > 1 - 1e-6
        counts = (fg | bg).flatten(1).sum(1)
        assert ((counts >= 1) & (counts <= 3)).all(), counts
        assert bool(truth[fg].all()) and not bool(truth[bg].any())


def test_init_network_keeps_outputs_without_clicks(tmp_path: Path) -> None:
    automatic = VMUNetV2(spatial_dims=2, in_channels=3, out_channels=1, **TINY).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that every tensor matters
        for m in automatic.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "automatic.pt"
    torch.save(automatic.state_dict(), path)
    interactive = init_network(VMUNetV2(spatial_dims=2, in_channels=5, out_channels=1, **TINY), path).eval()
    x = torch.rand(2, 3, 48, 40)
    with torch.no_grad():
        want = automatic(x)
        got = interactive(torch.cat([x, torch.zeros(2, 2, 48, 40)], 1))
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    grown = [k for k, v in interactive.state_dict().items() if v.shape != automatic.state_dict()[k].shape]
    assert grown, "no input convolution took the click channels"
    for k in grown:
        assert interactive.state_dict()[k][:, 3:].abs().sum() == 0
    assert init_network(interactive, None) is interactive


def test_init_network_refuses_a_mismatched_checkpoint(tmp_path: Path) -> None:
    other = VMUNetV2(spatial_dims=2, in_channels=3, out_channels=1, **{**TINY, "dims": 8})
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt"):
        init_network(VMUNetV2(spatial_dims=2, in_channels=5, out_channels=1, **TINY), tmp_path / "other.pt")
