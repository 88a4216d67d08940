"""The checkpoint handlers of ``vmunetv2_monai.handlers``: ``CheckpointLoader`` names a checkpoint of another network
size and keeps a resumed cosine falling, ``AtomicCheckpointSaver`` keeps an earlier run's model and never saves NaN
(issue 26; the checkpoint files themselves: tests/robustness/test_checkpoints.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from tests.robustness.conftest import TINY
from vmunetv2_monai import VMUNetV2
from vmunetv2_monai.handlers import AtomicCheckpointSaver, CheckpointLoader


def _net() -> VMUNetV2:
    kw = {k: v for k, v in TINY.items() if k != "image_size"}
    return VMUNetV2(spatial_dims=2, in_channels=3, out_channels=1, **kw)


def test_checkpoint_of_another_network_size_is_named(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(VMUNetV2(spatial_dims=2, in_channels=3, out_channels=1, depths=(1, 1, 1, 1), dims=24, d_state=4,
                        mid_channels=8).state_dict(), path)
    loader = CheckpointLoader(path, {"model": _net()})
    with pytest.raises(ValueError, match="other.pt does not fit this config"):
        loader(Engine(lambda e, b: None))


def _saver_run(folder: Path, net: torch.nn.Module, resumed_state: dict | None = None) -> None:
    saver = AtomicCheckpointSaver(folder, {"model": net}, filename="model.pt", save_key_metric=True,
                                  key_metric_name="dice")
    if resumed_state is not None:
        saver.load_state_dict(resumed_state)
    evaluator = Engine(lambda e, b: None)
    evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(dice=0.5))
    saver.attach(evaluator)
    evaluator.run([0], max_epochs=1)


def test_new_run_keeps_the_earlier_model_under_a_new_name(tmp_path):
    old = tmp_path / "model.pt"
    old.write_bytes(b"earlier run")
    _saver_run(tmp_path, _net())
    kept = sorted(tmp_path.glob("model.prev-*.pt"))
    assert len(kept) == 1 and kept[0].read_bytes() == b"earlier run"
    assert "encoder.patch_embed.proj.weight" in torch.load(old, weights_only=True)
    old.write_bytes(b"second run")  # a third run keeps both earlier files (same mtime second: a -1 suffix)
    os.utime(old, (kept[0].stat().st_mtime,) * 2)
    _saver_run(tmp_path, _net())
    assert sorted(p.read_bytes() for p in tmp_path.glob("model.prev-*.pt")) == [b"earlier run", b"second run"]


def test_resumed_run_overwrites_its_own_model(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"same run")
    _saver_run(tmp_path, _net(), resumed_state={"best_metric": 0.1})
    assert not list(tmp_path.glob("model.prev-*"))


def test_nan_model_is_never_saved(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"good model")
    net = _net()
    with torch.no_grad():
        next(net.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="NaN or Inf.*learning_rate"):
        _saver_run(tmp_path, net)
    assert (tmp_path / "model.pt").read_bytes() == b"good model"


def test_resume_with_more_epochs_keeps_the_learning_rate_falling(tmp_path):
    def make(epochs: int):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.AdamW([p], lr=1e-3)
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=1e-5)

    opt, sched = make(4)
    for _ in range(4):
        opt.step()
        sched.step()
    path = tmp_path / "latest.pt"
    torch.save({"optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict()}, path)
    opt, sched = make(10)
    CheckpointLoader(path, {"optimizer": opt, "lr_scheduler": sched})(Engine(lambda e, b: None))
    lrs = []
    for _ in range(6):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert sched.T_max == 10 and all(b <= a for a, b in zip(lrs, lrs[1:], strict=False)), lrs
    assert lrs[-1] == pytest.approx(1e-5)
