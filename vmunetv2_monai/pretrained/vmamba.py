"""Load VMamba v0 ImageNet checkpoints into the VM-UNetV2 encoder.

Supported files are the v0 releases used by VM-UNet / VM-UNetV2: ``vmamba_small_e238_ema.pth`` (VMamba-S,
depths 2-2-27-2) and ``vssmtiny_dp01_ckpt_epoch_292.pth`` (VMamba-T, 2-2-9-2). They hold a dict whose
``"model"`` entry has keys such as ``layers.{i}.blocks.{j}.self_attention.A_logs``. The encoder of
:class:`~vmunetv2_monai.VMUNetV2` uses the same names under the prefix ``encoder.``, so the mapping is a prefix;
the classifier (``head.*``) and the final ``norm.*`` are dropped, surplus blocks (27 vs 9) are reported as
unexpected, and the first convolution is adapted when ``in_channels != 3``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..checkpoints import find_non_finite, read_checkpoint

__all__ = ["LoadReport", "load_pretrained_encoder", "map_vmamba_v0_state_dict"]

logger = logging.getLogger(__name__)

_PREFIX = "encoder."
_FIRST_CONV = "encoder.patch_embed.proj.weight"
_DROPPED = ("head.", "norm.")  # ImageNet classifier and the final norm, not part of the encoder taps


@dataclass
class LoadReport:
    """Outcome of a pretrained load; key names are the model's (``encoder.*``) except for ``unexpected``.

    Attributes:
        loaded: model keys loaded from the checkpoint.
        missing: encoder keys of the model that the checkpoint does not fill (left at their initialisation).
        unexpected: checkpoint keys with no place in the model (the classifier, the final norm, surplus blocks).
        mismatched: ``"key: checkpoint shape -> model shape"`` for keys whose shapes differ (not loaded).
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """The four counts in one line, e.g. ``"loaded 140, missing 0, unexpected 4, shape-mismatched 0"``."""
        return (
            f"loaded {len(self.loaded)}, missing {len(self.missing)}, unexpected {len(self.unexpected)}, "
            f"shape-mismatched {len(self.mismatched)}"
        )


def _adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Map a ``(C, 3, k, k)`` kernel to ``in_channels``: summed for 1 (as repeating a grey image to RGB),
    cycled and rescaled by ``3 / in_channels`` otherwise."""
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    idx = torch.arange(in_channels) % weight.shape[1]
    return weight[:, idx] * (weight.shape[1] / in_channels)


def map_vmamba_v0_state_dict(
    state_dict: dict[str, torch.Tensor], model: nn.Module
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Pure key mapping from a VMamba v0 state dict to ``model``'s state dict keys.

    Every key gets the prefix ``encoder.``; the classifier (``head.*``), the final ``norm.*``, non-tensor entries and
    keys the model lacks are reported as unexpected, and the first convolution is adapted to the model's input
    channels (summed for 1 channel, cycled and rescaled otherwise).

    Args:
        state_dict: the checkpoint's ``"model"`` state dict (keys such as ``layers.0.blocks.0.self_attention.A_logs``).
        model: the network to load into (its state dict gives the target keys and shapes), e.g. :class:`VMUNetV2`.

    Returns:
        ``(mapped, report)``: ``mapped`` holds only keys of ``model`` with matching shapes; ``report`` is the
        :class:`LoadReport`.
    """
    target = model.state_dict()
    encoder_keys = [k for k in target if k.startswith(_PREFIX) and not k.endswith("num_batches_tracked")]
    mapped: dict[str, torch.Tensor] = {}
    report = LoadReport()
    for key, value in state_dict.items():
        if key.startswith(_DROPPED) or not isinstance(value, torch.Tensor):
            report.unexpected.append(key)
            continue
        new_key = _PREFIX + key
        if new_key not in target:
            report.unexpected.append(key)
            continue
        if new_key == _FIRST_CONV and value.shape[1] != target[new_key].shape[1]:
            value = _adapt_first_conv(value, target[new_key].shape[1])
        if value.shape != target[new_key].shape:
            report.mismatched.append(f"{new_key}: {tuple(value.shape)} -> {tuple(target[new_key].shape)}")
            continue
        mapped[new_key] = value
        report.loaded.append(new_key)
    report.missing = [k for k in encoder_keys if k not in mapped]
    return mapped, report


def load_pretrained_encoder(model: nn.Module, path: str | os.PathLike, min_loaded_fraction: float = 0.5) -> LoadReport:
    """Load a VMamba v0 checkpoint into ``model.encoder`` (``torch.load(..., weights_only=True)``).

    The result is logged (at WARNING when encoder tensors are missing or shape-mismatched).

    Args:
        model: the network, e.g. :class:`~vmunetv2_monai.VMUNetV2`; only its ``encoder.*`` tensors are loaded.
        path: the checkpoint file (``vmamba_small_e238_ema.pth``, ``vssmtiny_dp01_ckpt_epoch_292.pth``).
        min_loaded_fraction: the smallest share of the encoder's tensors that must match. Defaults to 0.5.

    Returns:
        The :class:`LoadReport`.

    Raises:
        FileNotFoundError: for a missing file.
        ValueError: for an unreadable file, NaN or Inf in the matched tensors, or when fewer than
            ``min_loaded_fraction`` of the encoder's tensors match (a newer VMamba format, a wrong file).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained checkpoint not found: {path}")
    # only the tensors that are loaded must be finite (checked below)
    ckpt = read_checkpoint(path, check_finite=False, what="pretrained checkpoint")
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        ckpt = ckpt["model"]
    if not isinstance(ckpt, dict):
        raise ValueError(f"pretrained checkpoint {path} holds a {type(ckpt).__name__}, expected a state dict.")
    mapped, report = map_vmamba_v0_state_dict(ckpt, model)
    bad = find_non_finite(mapped)
    if bad:
        raise ValueError(f"pretrained checkpoint {path}: {len(bad)} tensor(s) hold NaN or Inf "
                         f"({', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}); not loaded")
    total = len(report.loaded) + len(report.missing)
    if total == 0 or len(report.loaded) < min_loaded_fraction * total:
        sample = ", ".join(list(ckpt)[:3])
        raise ValueError(
            f"{path} does not look like a VMamba v0 checkpoint: only {len(report.loaded)} of {total} encoder "
            f"tensors matched ({report.summary()}); first keys in the file: {sample}. "
            "Expected keys like 'layers.0.blocks.0.self_attention.A_logs' (vmamba_small_e238_ema.pth, "
            "vssmtiny_dp01_ckpt_epoch_292.pth); newer VMamba releases use other names."
        )
    model.load_state_dict(mapped, strict=False)
    # a partial match leaves encoder tensors at their random initialisation: say so at WARNING
    level = logging.WARNING if report.missing or report.mismatched else logging.INFO
    logger.log(level, "pretrained encoder from %s: %s (%.0f %% of the encoder's tensors)", path, report.summary(),
               100.0 * len(report.loaded) / total)
    lists = {"missing": report.missing, "unexpected": report.unexpected, "mismatched": report.mismatched}
    for name, keys in lists.items():
        if keys:
            logger.log(logging.INFO if name == "unexpected" else level, "%s keys (%d): %s", name, len(keys),
                       ", ".join(keys[:10]) + (" ..." if len(keys) > 10 else ""))
    return report
