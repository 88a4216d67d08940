"""Start the interactive model from the automatic one."""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from ..checkpoints import load_state_dict

__all__ = ["init_network"]

logger = logging.getLogger(__name__)


def init_network(network: nn.Module, automatic_weights: str | os.PathLike | None) -> nn.Module:
    """Load an automatic model's weights into the interactive network, whose input has extra click channels.

    Every tensor must match, except input convolutions whose checkpoint weight has fewer input channels
    ``(out, c, k, k)`` than the network's ``(out, c + n, k, k)``: their first ``c`` channels are copied and the click
    channels start at zero, so with no clicks the new model computes exactly what the automatic one does.

    Args:
        network: the interactive network (e.g. ``VMUNetV2(in_channels=5)``).
        automatic_weights: a checkpoint of the same network with fewer input channels; None leaves ``network`` as
            it is.

    Returns:
        ``network``, loaded.
    """
    if automatic_weights is None:
        return network
    source = load_state_dict(automatic_weights)
    target = network.state_dict()
    merged = {}
    for name, value in target.items():
        if name not in source:
            raise ValueError(f"automatic model weights {automatic_weights} have no tensor {name}")
        old = source[name]
        if old.shape == value.shape:
            merged[name] = old
        elif old.ndim == value.ndim >= 2 and old.shape[0] == value.shape[0] and old.shape[2:] == value.shape[2:] \
                and old.shape[1] < value.shape[1]:
            grown = torch.zeros_like(value)
            grown[:, : old.shape[1]] = old
            merged[name] = grown
            logger.info("%s: %d input channels from %s, %d click channels start at zero", name, old.shape[1],
                        automatic_weights, value.shape[1] - old.shape[1])
        else:
            raise ValueError(f"automatic model weights {automatic_weights}: {name} has shape {tuple(old.shape)}, "
                             f"the interactive network needs {tuple(value.shape)}")
    network.load_state_dict(merged, strict=True)
    return network
