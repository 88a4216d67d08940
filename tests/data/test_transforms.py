"""The mask rule (``binarize_mask``) on in-memory masks, and ``LoadImaged``'s refusal of non-finite files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vmunetv2_monai.data import BinarizeMaskd, LoadImaged, binarize_mask
from vmunetv2_monai.data.transforms import MAX_LABELS

LESION = torch.zeros(1, 6, 8, dtype=torch.bool)
LESION[0, 1:4, 2:6] = True


def _mask(background: float, lesion: float) -> torch.Tensor:
    return torch.where(LESION, torch.tensor(lesion), torch.tensor(background)).float()


@pytest.mark.parametrize("background, lesion", [
    (0, 1), (0, 0.8), (0, 255), (0, 200), (0, 2), (0, MAX_LABELS), (0, 100), (0, 70), (0, 65535), (30, 230), (2, 90),
])
def test_every_scale_reads_its_lesion(background, lesion):
    assert torch.equal(binarize_mask(_mask(background, lesion)), LESION)


def test_label_masks_count_every_label_as_lesion():
    mask = _mask(0, 1)
    mask[0, 1, 2:4] = 2
    mask[0, 2, 2] = 3
    assert torch.equal(binarize_mask(mask), LESION)


def test_threshold_is_a_fraction_of_the_scale():
    soft = _mask(0, 40)
    soft[0, 0, 0] = 100  # percent scale; the lesion at 40 is below half of it
    assert binarize_mask(soft, threshold=127).sum() == 1
    assert torch.equal(binarize_mask(soft, threshold=51), soft > 20)  # 51 / 255 = 20 %


def test_colour_channels_count_and_alpha_does_not():
    rgba = torch.zeros(4, 6, 8)
    rgba[0] = _mask(0, 255)[0]  # red lesion
    rgba[3] = 255  # opaque everywhere
    assert torch.equal(binarize_mask(rgba), LESION)
    assert torch.equal(binarize_mask(rgba[:3]), LESION)


@pytest.mark.parametrize("background, lesion, reason", [
    (0, 40, "ambiguous"),  # labels beyond MAX_LABELS, or a soft mask below 50 %
    (0, 120, "ambiguous"),  # 8-bit, nothing above 127
    (0, 1000, "ambiguous"),  # 16-bit, nothing above 32767
    (0, 2.5, "ambiguous"),  # not integer labels and below 50 of 100
    (-1, 1, "negative"),
    (0, 70000, "above 65535"),
    (0, float("nan"), "NaN"),
])
def test_ambiguous_masks_are_refused_with_the_source(background, lesion, reason):
    with pytest.raises(ValueError, match=reason) as err:
        binarize_mask(_mask(background, lesion), source="masks/x.png")
    assert "masks/x.png" in str(err.value)


def test_empty_mask_stays_empty():
    assert not binarize_mask(torch.zeros(1, 4, 4)).any()


def test_binarize_maskd_output_and_bad_threshold():
    out = BinarizeMaskd("label")({"label": _mask(0, 2)})["label"]
    assert out.dtype == torch.float32 and torch.equal(out.bool(), LESION)
    with pytest.raises(ValueError, match="threshold 300"):
        BinarizeMaskd("label", threshold=300)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_load_refuses_non_finite_files_by_name(tmp_path, bad):
    values = np.full((10, 12), 50.0, np.float32)
    values[2:4, 3:6] = bad
    Image.fromarray(values, mode="F").save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match="6 of 120 values are NaN or infinite") as err:
        LoadImaged("image")({"image": str(tmp_path / "float.tif")})
    assert "float.tif" in str(err.value)
    values[2:4, 3:6] = 7.0
    Image.fromarray(values, mode="F").save(tmp_path / "float.tif")
    assert LoadImaged("image")({"image": str(tmp_path / "float.tif")})["image"].isfinite().all()
