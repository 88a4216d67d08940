"""CUDAGraphed: direct calls on CPU, in training and with gradients; on a GPU, replay equal to the eager forward."""

from __future__ import annotations

import pytest
import torch

from vmunetv2_monai.networks import CUDAGraphed, VMUNetV2

TINY = {"depths": (1, 1, 1, 1), "dims": 16, "d_state": 8, "mid_channels": 8}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _net(device: str = "cpu") -> VMUNetV2:
    torch.manual_seed(0)
    return VMUNetV2(spatial_dims=2, in_channels=3, out_channels=1, drop_path_rate=0.0, **TINY).to(device).eval()


def test_cpu_training_and_grad_calls_go_straight_to_the_network() -> None:
    net = _net()
    graphed = CUDAGraphed(net)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(graphed(x), net(x))
    assert graphed(x).requires_grad  # gradients enabled: the network itself ran
    graphed.train()
    assert isinstance(graphed(x), list)  # deep supervision in training mode, never graphed
    assert graphed.num_graphs == 0
    assert graphed.state_dict().keys() == {f"network.{k}" for k in net.state_dict()}


@pytest.mark.parametrize(("kwargs", "message"), [({"warmup": 0}, "warmup"), ({"max_graphs": 0}, "max_graphs")])
def test_bad_settings_are_named(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        CUDAGraphed(_net(), **kwargs)


@cuda
@pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16])
def test_replay_equals_eager_per_shape_and_outputs_are_not_aliased(amp_dtype) -> None:
    net = _net("cuda")
    graphed = CUDAGraphed(net, max_graphs=2)
    amp = torch.autocast("cuda", dtype=amp_dtype) if amp_dtype else torch.autocast("cuda", enabled=False)
    with torch.no_grad(), amp:
        a, b = torch.rand(1, 3, 64, 64, device="cuda"), torch.rand(1, 3, 64, 64, device="cuda")
        out_a, out_b = graphed(a), graphed(b)
        tol = {} if amp_dtype is None else {"atol": 2e-2, "rtol": 2e-2}
        torch.testing.assert_close(out_a, net(a), **tol)
        torch.testing.assert_close(out_b, net(b), **tol)
        assert not torch.equal(out_a, out_b)  # the first result survived the second replay
        assert graphed.num_graphs == 1
        graphed(torch.rand(1, 3, 96, 64, device="cuda"))
        graphed(torch.rand(2, 3, 64, 64, device="cuda"))
        assert graphed.num_graphs == 2  # the least recently used graph was dropped
