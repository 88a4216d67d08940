"""The VSS block's in-place steps (SS2D's SiLU and gate, the residual add): same values as the out-of-place formula,
the caller's input untouched, and the residual stream's dtype kept under autocast."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vmunetv2_monai.networks.blocks.vss_block import VSSBlock


def _block() -> VSSBlock:
    torch.manual_seed(0)
    return VSSBlock(16, d_state=4).eval()


def test_block_equals_out_of_place_residual_and_leaves_input_untouched() -> None:
    block = _block()
    x = torch.randn(2, 6, 5, 16)
    before = x.clone()
    with torch.no_grad():
        out = block(x)
        branch = block.drop_path(block.self_attention(block.ln_1(x)))
    assert torch.equal(x, before)
    assert torch.equal(out, x + branch)


def test_block_keeps_the_residual_dtype_under_autocast() -> None:
    block = _block()
    x = torch.randn(1, 4, 4, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        branch = block.drop_path(block.self_attention(block.ln_1(x)))
        out = block(x)
    assert branch.dtype == torch.bfloat16  # the case the in-place add must not take
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x + branch.float())


def test_gradients_match_the_out_of_place_block() -> None:
    block = _block().train()
    x = torch.randn(1, 4, 5, 16, requires_grad=True)
    block(x).square().sum().backward()
    grads = [x.grad.clone()] + [p.grad.clone() for p in block.parameters()]
    x.grad = None
    block.zero_grad()
    attn = block.self_attention
    h = block.ln_1(x)
    u, z = F.linear(h, attn.in_proj.weight[: attn.d_inner]), F.linear(h, attn.in_proj.weight[attn.d_inner :])
    y = attn.out_norm(attn._cross_scan_unfused(F.silu(attn.conv2d(u.permute(0, 3, 1, 2)))))
    (x + attn.out_proj(y * F.silu(z))).square().sum().backward()  # the block before its in-place steps
    expected = [x.grad] + [p.grad for p in block.parameters()]
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
