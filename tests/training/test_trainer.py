"""CPU-budget trainer: cached arrays, batched augmentation, budget and schedule, best/latest checkpoints, resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from vmunetv2_monai.data.datalist import find_pairs
from vmunetv2_monai.training import BatchAugment, TrainConfig, load_arrays, normalize_batch, train_for_budget
from vmunetv2_monai.training.trainer import _lr, evaluate_dice

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "kvasir_sample"
TINY = {"depths": (1, 1, 1, 1), "dims": 16, "size": 64, "batch_size": 2, "drop_path_rate": 0.0}


@pytest.fixture(scope="module")
def arrays():
    items = find_pairs(SAMPLE / "images", SAMPLE / "masks")
    return load_arrays(items[:6], 64), load_arrays(items[6:], 64, keep_full_masks=True)


def test_arrays_are_resized_uint8_with_binary_masks_and_full_size_masks(arrays) -> None:
    train, val = arrays
    assert train.images.shape == (6, 3, 64, 64) and train.images.dtype == torch.uint8
    assert train.masks.shape == (6, 1, 64, 64) and set(train.masks.unique().tolist()) <= {0, 1}
    assert train.masks.float().mean() > 0.02  # polyps are there, not all background
    assert val.full_masks is not None and len(val.full_masks) == 2 and val.full_masks[0].dtype == torch.bool
    assert val.full_masks[0].shape[0] > 64  # original resolution


def test_augment_moves_image_and_mask_together() -> None:
    g = torch.Generator().manual_seed(0)
    img = torch.zeros(16, 3, 32, 32)
    img[:, :, :8, :8] = 1.0
    mask = img[:, :1].clone()
    out_img, out_mask = BatchAugment(flips=True, rotate_prob=1.0, scale=0.2, color=0.0, generator=g)(img, mask)
    assert set(out_mask.unique().tolist()) <= {0.0, 1.0}
    bright = out_img.mean(1, keepdim=True) > 0.5
    assert (bright == (out_mask > 0.5)).float().mean() > 0.97  # the same geometry on both
    assert not torch.equal(out_mask, mask)  # something moved


def test_colour_jitter_keeps_range_and_changes_values() -> None:
    g = torch.Generator().manual_seed(0)
    img = torch.rand(8, 3, 16, 16)
    out, _ = BatchAugment(flips=False, rotate_prob=0.0, color=0.3, generator=g)(img.clone(), torch.zeros(8, 1, 16, 16))
    assert out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, img)


def test_normalize_modes() -> None:
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    assert torch.equal(normalize_batch(x, "unit"), torch.ones(1, 3, 2, 2))
    assert torch.allclose(normalize_batch(x, "imagenet")[0, :, 0, 0],
                          torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]))
    with pytest.raises(ValueError, match="unknown normalisation 'bogus'"):
        normalize_batch(x, "bogus")


def test_schedule_warms_up_then_anneals_to_eta_min() -> None:
    cfg = TrainConfig(lr=1e-3, warmup_frac=0.1, eta_min=1e-5)
    assert _lr(cfg, 0.0) == 0.0 and math.isclose(_lr(cfg, 0.05), 5e-4)
    assert math.isclose(_lr(cfg, 0.1), 1e-3) and math.isclose(_lr(cfg, 1.0), 1e-5)
    assert _lr(cfg, 0.5) < _lr(cfg, 0.3)


@pytest.mark.parametrize("changes", [{"model": "vmunetv2", **TINY, "loss": "ds", "ema": 0.9},
                                     {"model": "basicunet", "size": 64, "batch_size": 2, "loss": "fused",
                                      "features": (8, 8, 16, 32, 64, 8), "norm": "imagenet"}])
def test_budget_checkpoints_and_resume(arrays, tmp_path: Path, changes: dict) -> None:
    train, val = arrays
    cfg = TrainConfig(**changes)
    res = train_for_budget(cfg, train, val, budget_s=3.0, eval_every_s=1.5, out_dir=tmp_path)
    assert res["train_cpu_s"] >= 3.0 and res["steps"] >= 1 and len(res["curve"]) >= 2
    assert [c for c, _ in res["curve"]] == sorted(c for c, _ in res["curve"])
    assert res["best_val_dice"] == max(d for _, d in res["curve"])
    sd = torch.load(tmp_path / "model.pt", weights_only=True)
    from vmunetv2_monai.training import build_model

    net = build_model(cfg)
    net.load_state_dict(sd)
    assert math.isclose(evaluate_dice(net, val, cfg.norm), res["best_val_dice"], abs_tol=1e-4)
    # a longer budget resumes from latest.pt instead of starting over
    more = train_for_budget(cfg, train, val, budget_s=5.0, eval_every_s=1.5, out_dir=tmp_path, resume=True)
    assert more["steps"] > res["steps"] and more["curve"][: len(res["curve"])] == res["curve"]
    assert not list(tmp_path.glob(".tmp*"))


def test_bad_values_are_named(arrays) -> None:
    train, val = arrays
    with pytest.raises(ValueError, match="fewer than batch_size 16"):
        train_for_budget(TrainConfig(**{**TINY, "batch_size": 16}), train, val, 1.0, 1.0)
    with pytest.raises(ValueError, match="unknown model 'unet3'"):
        train_for_budget(TrainConfig(model="unet3", batch_size=2), train, val, 1.0, 1.0)
    with pytest.raises(FloatingPointError, match="training loss is nan"):
        train_for_budget(TrainConfig(**{**TINY, "lr": 1e12, "warmup_frac": 0.0}), train, val, 20.0, 20.0)
