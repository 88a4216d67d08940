"""CUDA-graph replay of a network's inference forward, for launch-bound small batches on a GPU."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

__all__ = ["CUDAGraphed"]


class CUDAGraphed(nn.Module):
    """Run ``network``'s eval forward as a captured CUDA graph, one graph per input shape, dtype and autocast state.

    At batch 1 VM-UNetV2 is bound by kernel launches on a GPU (hundreds of small kernels per image): replaying a
    captured graph launches them all at once. The first call with a new shape warms the network up on a side stream
    and captures it (a few forward passes); later calls copy the input into the graph's static input, replay, and
    return a copy of the static output. Everything else (CPU tensors, training mode, gradients enabled) calls
    ``network`` directly, so the wrapper can stay in place for every device.

    Under autocast the capture runs with autocast's weight cache off (the cached casts would otherwise be freed
    while the graph still reads them). Graphs hold their own memory: at most ``max_graphs`` are kept, the least
    recently used is dropped first.

    Args:
        network: a module whose forward takes one tensor ``(B, C, *spatial)`` and, in eval mode, returns one tensor.
        warmup: forward passes on a side stream before each capture (lazy initialisation, backend probes).
        max_graphs: graphs kept at the same time.

    Raises:
        ValueError: for ``warmup`` < 1 or ``max_graphs`` < 1.

    Examples::

        net = CUDAGraphed(VMUNetV2(spatial_dims=2, in_channels=3, out_channels=1).cuda().eval())
        with torch.no_grad():
            logits = net(torch.rand(1, 3, 256, 256, device="cuda"))   # captured on the first call, replayed after
    """

    def __init__(self, network: nn.Module, warmup: int = 2, max_graphs: int = 8) -> None:
        super().__init__()
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1, got {warmup}")
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.network = network
        self.warmup = warmup
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = OrderedDict()

    @property
    def num_graphs(self) -> int:
        """How many graphs are held now."""
        return len(self._graphs)

    def forward(self, x: torch.Tensor) -> Any:
        """``network(x)``, replayed from a graph for CUDA inputs in eval mode without gradients.

        Args:
            x: ``(B, C, *spatial)``.

        Returns:
            What ``network`` returns; a fresh tensor on the graph path.
        """
        if x.device.type != "cuda" or self.network.training or torch.is_grad_enabled():
            return self.network(x)
        autocast = torch.is_autocast_enabled("cuda")
        key = (tuple(x.shape), x.dtype, x.device, autocast, torch.get_autocast_dtype("cuda") if autocast else None)
        if key not in self._graphs:
            self._graphs[key] = self._capture(x, key[4])
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    def _capture(self, x: torch.Tensor, amp_dtype: torch.dtype | None) -> tuple:
        def amp() -> contextlib.AbstractContextManager:
            if amp_dtype is None:
                return contextlib.nullcontext()
            return torch.autocast("cuda", dtype=amp_dtype, cache_enabled=False)

        static_in = x.clone()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side), amp():
            for _ in range(self.warmup):
                self.network(static_in)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph), amp():
                static_out = self.network(static_in)
        except RuntimeError as err:
            raise RuntimeError(f"cannot capture a CUDA graph of {type(self.network).__name__} for an input of shape "
                               f"{tuple(x.shape)}: {err}") from err
        if not isinstance(static_out, torch.Tensor):
            raise TypeError(f"CUDAGraphed needs a network that returns one tensor in eval mode, "
                            f"{type(self.network).__name__} returned {type(static_out).__name__}")
        return graph, static_in, static_out
