"""Train a segmentation network for a budget of CPU seconds of this process (``time.process_time``).

The budget counts training steps only (data augmentation included, validation excluded), so a run's length does
not depend on other load on the machine. The learning rate follows a linear warm-up then a cosine to ``eta_min``
over the *budget* (not over epochs), so every run anneals fully whatever its pace. Validation runs every
``eval_every_s`` budget seconds; the best weights by validation mean Dice (per image, at original resolution,
logits resized bilinearly, threshold 0.5) are written atomically to ``<out_dir>/model.pt`` and the full state to
``<out_dir>/latest.pt`` (a killed run resumes from it).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DeepSupervisionLoss, DiceCELoss
from monai.networks.nets import BasicUNet
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..handlers.atomic import atomic_write
from ..networks.nets.vmunetv2 import VMUNetV2
from .augment import BatchAugment, normalize_batch
from .cache import ArraySet

__all__ = ["TrainConfig", "build_model", "evaluate_dice", "train_for_budget"]

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """One training setting. ``model`` is ``"vmunetv2"`` or ``"basicunet"``; the other fields apply to both unless
    named after one (``depths``/``dims``/``drop_path_rate``/``loss`` for VM-UNetV2, ``features`` for BasicUNet)."""

    model: str = "vmunetv2"
    depths: tuple[int, ...] = (2, 2, 2, 2)
    dims: int = 96
    drop_path_rate: float = 0.1
    loss: str = "ds"  # "ds": DeepSupervisionLoss over the five outputs; "fused": the fused output only
    features: tuple[int, ...] = (32, 32, 64, 128, 256, 32)
    dropout: float = 0.0
    size: int = 128
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_frac: float = 0.0
    eta_min: float = 1e-5
    flips: bool = True
    rotate_prob: float = 0.5
    scale: float = 0.0
    color: float = 0.0
    norm: str = "unit"
    ema: float = 0.0
    seed: int = 42
    extra: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def build_model(cfg: TrainConfig, in_channels: int = 3, out_channels: int = 1) -> nn.Module:
    """The network of ``cfg`` (VM-UNetV2 without the unused stage 4, or MONAI's BasicUNet)."""
    if cfg.model == "vmunetv2":
        return VMUNetV2(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, depths=cfg.depths,
                        dims=cfg.dims, drop_path_rate=cfg.drop_path_rate, keep_unused_stage=False)
    if cfg.model == "basicunet":
        return BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels,
                         features=cfg.features, dropout=cfg.dropout)
    raise ValueError(f"unknown model {cfg.model!r}: use 'vmunetv2' or 'basicunet'")


def _loss_fn(cfg: TrainConfig) -> nn.Module:
    dice_ce = DiceCELoss(sigmoid=True)
    if cfg.model == "vmunetv2" and cfg.loss == "ds":
        return DeepSupervisionLoss(dice_ce, weight_mode="exp")
    if cfg.loss not in ("ds", "fused"):
        raise ValueError(f"unknown loss {cfg.loss!r}: use 'ds' or 'fused'")
    return dice_ce


def _lr(cfg: TrainConfig, frac: float) -> float:
    if frac < cfg.warmup_frac:
        return cfg.lr * (frac / cfg.warmup_frac)
    t = (frac - cfg.warmup_frac) / max(1e-9, 1 - cfg.warmup_frac)
    return cfg.eta_min + (cfg.lr - cfg.eta_min) * (1 + math.cos(math.pi * min(1.0, t))) / 2


@torch.no_grad()
def evaluate_dice(net: nn.Module, val: ArraySet, norm: str, batch_size: int = 16) -> float:
    """Mean per-image Dice of ``net`` on ``val`` at the masks' original resolution (``val.full_masks``)."""
    if val.full_masks is None:
        raise ValueError("evaluate_dice needs an ArraySet loaded with keep_full_masks=True")
    net.eval()
    dices = []
    for i in range(0, len(val.names), batch_size):
        logits = net(normalize_batch(val.images[i : i + batch_size], norm))
        for j, gt in enumerate(val.full_masks[i : i + batch_size]):
            pred = F.interpolate(logits[j : j + 1], size=tuple(gt.shape), mode="bilinear", align_corners=False)[0, 0] > 0
            inter, total = (pred & gt).sum().item(), pred.sum().item() + gt.sum().item()
            dices.append(1.0 if total == 0 else 2.0 * inter / total)
    return float(sum(dices) / len(dices))


def train_for_budget(
    cfg: TrainConfig,
    train: ArraySet,
    val: ArraySet,
    budget_s: float,
    eval_every_s: float,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train ``cfg`` on ``train`` for ``budget_s`` CPU seconds; returns ``{"curve": [(cpu_s, val_dice), ...],
    "best_val_dice", "best_cpu_s", "steps", "epochs", "train_cpu_s", "eval_cpu_s", "params"}``."""
    if budget_s <= 0 or eval_every_s <= 0:
        raise ValueError(f"budget_s and eval_every_s must be > 0, got {budget_s} and {eval_every_s}")
    if len(train.names) < cfg.batch_size:
        raise ValueError(f"{len(train.names)} training images are fewer than batch_size {cfg.batch_size}")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    net = build_model(cfg, in_channels=train.images.shape[1])
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True) if cfg.ema > 0 else None
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = _loss_fn(cfg)
    augment = BatchAugment(cfg.flips, cfg.rotate_prob, cfg.scale, cfg.color, generator=gen)
    state = {"used": 0.0, "eval_cpu": 0.0, "step": 0, "epoch": 0, "curve": [], "best": -1.0, "best_cpu": 0.0}
    out = Path(out_dir) if out_dir is not None else None
    if resume and out is not None and (out / "latest.pt").is_file():
        ckpt = torch.load(out / "latest.pt", map_location="cpu", weights_only=True)
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        gen.set_state(ckpt["generator"])
        state = ckpt["state"]
        state["curve"] = [tuple(p) for p in state["curve"]]
        logger.info("resumed from %s at %.0f of %.0f CPU s", out / "latest.pt", state["used"], budget_s)
    n = len(train.names)
    next_eval = (math.floor(state["used"] / eval_every_s) + 1) * eval_every_s
    order, pos = torch.randperm(n, generator=gen), 0
    while state["used"] < budget_s:
        t0 = time.process_time()
        net.train()
        if pos + cfg.batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
            state["epoch"] += 1
        idx = order[pos : pos + cfg.batch_size]
        pos += cfg.batch_size
        images, masks = augment(train.images[idx].float() / 255.0, train.masks[idx].float())
        x = normalize_batch(images, cfg.norm)
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, state["used"] / budget_s)
        out_t = net(x)
        if isinstance(out_t, list) and not isinstance(loss_fn, DeepSupervisionLoss):
            out_t = out_t[0]
        loss = loss_fn(out_t, masks)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step {state['step']} (lr {cfg.lr}): stopped")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update_parameters(net)
        state["step"] += 1
        state["used"] += time.process_time() - t0
        if state["used"] >= next_eval or state["used"] >= budget_s:
            next_eval += eval_every_s
            t1 = time.process_time()
            model = ema.module if ema is not None else net
            dice = evaluate_dice(model, val, cfg.norm)
            state["curve"].append((round(state["used"], 1), round(dice, 4)))
            logger.info("%s: %.0f / %.0f CPU s, step %d, epoch %d, loss %.4f, val mean Dice %.4f",
                        cfg.model, state["used"], budget_s, state["step"], state["epoch"], loss.item(), dice)
            if dice > state["best"]:
                state["best"], state["best_cpu"] = dice, state["used"]
                if out is not None:
                    sd = model.state_dict()
                    atomic_write(out / "model.pt", lambda p, sd=sd: torch.save(sd, p))
            state["eval_cpu"] += time.process_time() - t1
            if out is not None:
                ckpt = {"model": net.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
                        "state": state, **({"ema": ema.state_dict()} if ema is not None else {})}
                atomic_write(out / "latest.pt", lambda p, c=ckpt: torch.save(c, p))
    return {
        "curve": state["curve"], "best_val_dice": round(state["best"], 4), "best_cpu_s": state["best_cpu"],
        "steps": state["step"], "epochs": round(state["step"] * cfg.batch_size / n, 2),
        "train_cpu_s": round(state["used"], 1), "eval_cpu_s": round(state["eval_cpu"], 1),
        "params": sum(p.numel() for p in net.parameters()),
    }
