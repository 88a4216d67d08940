"""VMUNetV2: shapes, gradients, parameter count, determinism, backends and argument errors."""

from __future__ import annotations

import itertools

import pytest
import torch

from tests.conftest import rel_err
from vmunetv2_monai import VMUNetV2

TINY = {"depths": (1, 1, 1, 1), "dims": 16, "d_state": 4, "mid_channels": 8}

SHAPE_CASES = [
    # (in_channels, out_channels, deep_supervision), (H, W)
    (ch, size)
    for ch, size in itertools.product(
        [(3, 1, True), (1, 1, True), (3, 4, False), (2, 3, True)], [(64, 64), (33, 47), (96, 40), (17, 129)]
    )
]


@pytest.mark.parametrize("channels,size", SHAPE_CASES)
def test_eval_output_shape(channels: tuple[int, int, bool], size: tuple[int, int]) -> None:
    in_ch, out_ch, ds = channels
    net = VMUNetV2(spatial_dims=2, in_channels=in_ch, out_channels=out_ch, deep_supervision=ds, **TINY).eval()
    with torch.no_grad():
        y = net(torch.randn(2, in_ch, *size))
    assert isinstance(y, torch.Tensor)
    assert y.shape == (2, out_ch, *size)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("size", [(64, 64), (45, 70)])
def test_training_output_is_deep_supervision_list(size: tuple[int, int]) -> None:
    h, w = size
    net = VMUNetV2(in_channels=3, out_channels=2, **TINY).train()
    outs = net(torch.randn(2, 3, h, w))
    assert isinstance(outs, list) and len(outs) == 5
    expected = [(h, w), (h, w)] + [(-(-h // s), -(-w // s)) for s in (2, 4, 8)]
    assert [tuple(o.shape[-2:]) for o in outs] == expected
    assert all(o.shape[:2] == (2, 2) for o in outs)


def test_training_without_deep_supervision_returns_one_tensor() -> None:
    net = VMUNetV2(deep_supervision=False, **TINY).train()
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_eval_output_equals_first_training_output_without_stochastic_layers() -> None:
    net = VMUNetV2(drop_path_rate=0.0, **TINY)
    x = torch.randn(2, 3, 40, 56)
    net.train()
    train_out = net(x)[0]
    net.eval()  # BatchNorm switches to running stats: compare in train mode with frozen BN instead
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.train()
    torch.testing.assert_close(net(x), train_out)


def test_gradients_reach_every_used_parameter() -> None:
    net = VMUNetV2(in_channels=3, out_channels=2, **TINY).train()
    outs = net(torch.randn(2, 3, 64, 48))
    sum(o.square().mean() for o in outs).backward()
    unused_prefix = "encoder.layers.3."  # stage 4: never run, as in the official model
    for name, p in net.named_parameters():
        if name.startswith(unused_prefix):
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"


def _expected_param_count(depths: tuple[int, ...], keep_stage4: bool) -> int:
    """Analytic count from the spec (section 1.4 and 2) for dims 96, mid 48, one output channel."""
    block = {96: 105_408, 192: 339_840, 384: 1_195_776, 768: 4_455_936}
    merging = 74_496 + 296_448 + 1_182_720
    stages = depths[: 4 if keep_stage4 else 3]
    encoder = 4_896 + merging + sum(d * block[c] for d, c in zip(stages, block, strict=False))
    ca, sa, trans = 1_152 + 4_608 + 18_432 + 73_728, 4 * 98, 4_704 + 9_312 + 18_528 + 36_960
    sdi = 4 * 83_136
    decoder = 4 * (48 + 1) + 3 * 48 * 48 * 16 + (9 + 1)  # heads, three deconvs, the fusing deconv (deconv6)
    return encoder + ca + sa + trans + sdi + decoder


@pytest.mark.parametrize("keep", [True, False])
def test_parameter_count(keep: bool) -> None:
    net = VMUNetV2(keep_unused_stage=keep)
    count = sum(p.numel() for p in net.parameters())
    assert count == _expected_param_count((2, 2, 9, 2), keep)
    if keep:  # the official 22.77 M also counts the never-used deconv5 (36,864), which is not built here
        assert abs(count - 22.77e6) / 22.77e6 < 0.005


def test_unused_stage_does_not_change_output() -> None:
    torch.manual_seed(1)
    net = VMUNetV2(**TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = net(x)
        for p in net.encoder.layers[3].parameters():
            p.add_(1.0)
        torch.testing.assert_close(net(x), before)
    assert len(VMUNetV2(keep_unused_stage=False, **TINY).encoder.layers) == 3


def test_first_tap_is_the_patch_embedding() -> None:
    net = VMUNetV2(**TINY).eval()
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        taps = net.encoder(x)
        torch.testing.assert_close(taps[0], net.encoder.patch_embed(x).permute(0, 3, 1, 2))
    assert [t.shape[1] for t in taps] == [16, 32, 64, 128]
    assert [t.shape[-2:] for t in taps] == [(64 // r, 32 // r) for r in net.encoder.reductions]


def test_deterministic() -> None:
    x = torch.randn(1, 3, 48, 64)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        net = VMUNetV2(**TINY).eval()
        with torch.no_grad():
            outs.append(net(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_torch_backend_matches_reference_backend_in_the_network() -> None:
    net_t = VMUNetV2(scan_backend="torch", **TINY).eval()
    net_r = VMUNetV2(scan_backend="reference", **TINY).eval()
    net_r.load_state_dict(net_t.state_dict())
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        assert rel_err(net_t(x), net_r(x)) < 1e-5


def test_cpu_fused_matches_reference_backend_in_the_network() -> None:
    """Training-mode outputs and every parameter's gradient (d_state 8: a size the compiled kernel takes)."""
    kwargs = {**TINY, "d_state": 8, "drop_path_rate": 0.0}
    net_f = VMUNetV2(scan_backend="cpu_fused", **kwargs).train()
    net_r = VMUNetV2(scan_backend="reference", **kwargs).train()
    net_r.load_state_dict(net_f.state_dict())
    x = torch.randn(2, 3, 32, 64)
    outs_f, outs_r = net_f(x), net_r(x)
    for got, want in zip(outs_f, outs_r, strict=True):
        assert rel_err(got, want) < 1e-5
    sum(o.square().mean() for o in outs_f).backward()
    sum(o.square().mean() for o in outs_r).backward()
    for (name, p_f), p_r in zip(net_f.named_parameters(), net_r.parameters(), strict=True):
        if p_r.grad is not None:
            assert rel_err(p_f.grad, p_r.grad) < 1e-4, name


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    net_a = VMUNetV2(drop_path_rate=0.0, **TINY).train()
    net_b = VMUNetV2(drop_path_rate=0.0, use_checkpoint=True, **TINY).train()
    net_b.load_state_dict(net_a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    for net in (net_a, net_b):
        sum(o.sum() for o in net(x)).backward()
    for (name, pa), pb in zip(net_a.named_parameters(), net_b.parameters(), strict=True):
        if pa.grad is not None:
            torch.testing.assert_close(pa.grad, pb.grad, msg=name)


def test_initialisation_follows_the_official_code() -> None:
    net = VMUNetV2(d_state=4, **{k: v for k, v in TINY.items() if k != "d_state"})
    ss2d = net.encoder.layers[0].blocks[0].self_attention
    torch.testing.assert_close(ss2d.A_logs[0], torch.log(torch.arange(1, 5, dtype=torch.float32)))
    assert torch.equal(ss2d.Ds, torch.ones_like(ss2d.Ds))
    dt = torch.nn.functional.softplus(ss2d.dt_projs_bias)
    assert dt.min() >= 1e-4 * 0.999 and dt.max() <= 0.1 * 1.001
    assert ss2d.dt_rank == 1 and ss2d.d_inner == 32  # ceil(16 / 16), ssm_ratio 2


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"spatial_dims": 3}, "spatial_dims=2 only"),
        ({"depths": (2, 2, 9)}, "depths must be 4"),
        ({"depths": (2, 0, 9, 2)}, "depths must be 4"),
        ({"dims": (96, 192, 384, 700)}, "dims must be"),
        ({"out_channels": 0}, "out_channels must be"),
        ({"in_channels": 2.5}, "in_channels must be"),
        ({"scan_backend": "triton"}, "scan_backend must be one of"),
        ({"drop_path_rate": 1.5}, "drop_path_rate"),
        ({"d_state": 0}, "d_state must be"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        VMUNetV2(**{**TINY, **kwargs})


def test_wrong_input_channels_raise() -> None:
    net = VMUNetV2(in_channels=3, **TINY)
    with pytest.raises(ValueError, match=r"expects input \(B, 3, H, W\)"):
        net(torch.randn(1, 64, 64, 3))
