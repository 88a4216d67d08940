"""ResizeInferer: whole-image inference at the training size, logits back at the input size."""

from __future__ import annotations

import pytest
import torch
from monai.transforms import Resize

from vmunetv2_monai.inferers import ResizeInferer


class Recorder(torch.nn.Module):
    """A 1x1 conv that records the spatial size it was called with."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 2, 1)
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape[2:]))
        return self.conv(x)


def test_network_sees_spatial_size_and_logits_come_back_at_input_size() -> None:
    net = Recorder()
    x = torch.rand(2, 3, 50, 71)
    out = ResizeInferer((32, 24))(x, net)
    assert net.seen == [(32, 24)] and out.shape == (2, 2, 50, 71)


def test_same_resize_as_the_training_transforms() -> None:
    """The network input equals MONAI's Resize (the bundle's spatial_transforms#resize) of each image."""
    net = Recorder()
    x = torch.rand(1, 3, 45, 60)
    captured = {}
    net.register_forward_hook(lambda m, args, out: captured.setdefault("x", args[0]))
    ResizeInferer((32, 32))(x, net)
    expected = Resize((32, 32), mode="bilinear")(x[0])
    torch.testing.assert_close(captured["x"][0], torch.as_tensor(expected), rtol=1e-5, atol=1e-6)


def test_identity_when_the_input_already_has_the_size() -> None:
    net = Recorder()
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(ResizeInferer((32, 32))(x, net), net(x))


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="spatial_size"):
        ResizeInferer((0, 32))
    with pytest.raises(ValueError, match="spatial_size"):
        ResizeInferer((32, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        ResizeInferer((32, 32))(torch.rand(3, 32, 32), Recorder())
    with pytest.raises(TypeError, match="eval mode"):
        ResizeInferer((32, 32))(torch.rand(1, 3, 32, 32), lambda x: [x, x])
