"""PredictionWriter through the bundle's inference.json: the mask and overlay of a non-square PNG have the input's
orientation (MONAI reads a PNG as (X, Y); SaveImage + PILWriter write it back as rows = Y)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigWorkflow
from PIL import Image

from vmunetv2_monai.handlers import overlay_contour

CONFIGS = Path(__file__).resolve().parents[2] / "bundle" / "configs"


def test_mask_and_overlay_keep_the_input_orientation(tmp_path: Path) -> None:
    box = np.zeros((37, 53), dtype=bool)  # H != W, and a box that is not symmetric under transposition
    box[5:12, 10:40] = True
    inputs, out = tmp_path / "images", tmp_path / "out"
    inputs.mkdir()
    rgb = np.zeros((37, 53, 3), np.uint8)
    rgb[..., 0] = rgb[..., 1] = box * 255  # yellow box; the stand-in network below segments the red channel
    Image.fromarray(rgb).save(inputs / "wide.png")
    net = torch.nn.Conv2d(3, 1, kernel_size=1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([20.0, 0.0, 0.0]).reshape(1, 3, 1, 1))
        net.bias.fill_(-10.0)
    torch.save({"model": net.state_dict()}, tmp_path / "model.pt")
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"), meta_file=str(CONFIGS / "metadata.json"), workflow_type="infer",
        bundle_root=str(CONFIGS.parent), dataset_dir=str(inputs), output_dir=str(out),
        ckpt_path=str(tmp_path / "model.pt"), num_workers=0, spatial_mode="patch", image_size=[32, 32],
        network_def={"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 1, "kernel_size": 1},
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()

    mask = np.asarray(Image.open(out / "predictions" / "wide_mask.png"))
    assert mask.shape == box.shape and set(np.unique(mask)) == {0, 255}
    np.testing.assert_array_equal(mask > 0, box)
    overlay = np.asarray(Image.open(out / "predictions" / "wide_overlay.png"))
    assert overlay.shape == (*box.shape, 3)
    red = np.all(overlay == (255, 0, 0), axis=-1)
    np.testing.assert_array_equal(red, np.all(overlay_contour(np.zeros_like(rgb), box) == (255, 0, 0), axis=-1))
