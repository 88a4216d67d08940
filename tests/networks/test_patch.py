"""Patch merging (``vmunetv2_monai.networks.blocks.patch``): its reduction on oneDNN gives nn.Linear's values and
gradients."""

from __future__ import annotations

import torch

from vmunetv2_monai.networks.blocks.patch import PatchMerging2D


def test_patch_merging_reduction_on_onednn_equals_nn_linear() -> None:
    """PatchMerging's reduction runs through ``linear_cpu`` (oneDNN on float32 CPU tensors): nn.Linear's values and
    gradients, with and without autograd."""
    torch.manual_seed(0)
    merge = PatchMerging2D(dim=24)
    x = torch.randn(2, 8, 6, 24, requires_grad=True)
    out = merge(x)
    ref = merge.reduction(merge.norm(torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                                                x[:, 1::2, 1::2]], dim=-1)))
    torch.testing.assert_close(out, ref)
    dy = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, merge.reduction.weight), dy)
    want = torch.autograd.grad(ref, (x, merge.reduction.weight), dy)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
    with torch.no_grad():
        torch.testing.assert_close(merge(x), ref)
