"""Click checking, rendering, the simulated annotator's click, and the click channels transform."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from vmunetv2_monai.interactive import (
    MAX_CLICKS,
    AddClickGuidanced,
    check_clicks,
    next_click,
    read_clicks,
    read_clicks_file,
    render_clicks,
)

LABELS = {"lesion": 1, "background": 0}


def test_check_clicks_accepts_whole_numbers():
    assert check_clicks([[0, 1], [9.0, 4]], (10, 5), "foreground") == [[0, 1], [9, 4]]
    assert check_clicks(None, (10, 5), "foreground") == []
    assert check_clicks(np.array([[2, 3]]), (10, 5), "background") == [[2, 3]]


@pytest.mark.parametrize(
    "clicks, words",
    [
        ([[10, 1]], "outside the image"),
        ([[-1, 1]], "outside the image"),
        ([[2.5, 1]], "whole number"),
        ([[float("nan"), 1]], "whole number"),
        ([[1, 2, 3]], "not a point of 2"),
        ("1,2", "must be a list"),
        ([[1, 1]] * (MAX_CLICKS + 1), "more than"),
    ],
)
def test_check_clicks_refuses_bad_clicks_by_name(clicks, words):
    with pytest.raises(ValueError, match=words) as err:
        check_clicks(clicks, (10, 5), "foreground", "a.png")
    assert "a.png" in str(err.value) and "foreground" in str(err.value)


def test_read_clicks_label_name_and_unknown_label():
    fg, bg = read_clicks({"lesion": [[1, 1]], "foreground": [[2, 2]], "background": [[3, 3]]}, LABELS, (8, 8))
    assert fg == [[2, 2], [1, 1]] and bg == [[3, 3]]
    with pytest.raises(ValueError, match="'tumour'"):
        read_clicks({"tumour": [[1, 1]]}, LABELS, (8, 8), "x.png")
    assert read_clicks({"label": "/data/labels/x.png", "background": [[1, 1]]}, LABELS, (8, 8)) == ([], [[1, 1]])


def test_render_clicks_peak_and_width_follow_the_grid():
    one = render_clicks([[5, 5]], (11, 11), (11, 11), 2.0)
    assert one.shape == (11, 11) and float(one[5, 5]) == pytest.approx(1.0) and float(one[5, 7]) == pytest.approx(
        np.exp(-0.5), rel=1e-5)
    wide = render_clicks([[10, 10]], (22, 22), (11, 11), 2.0)  # twice the grid: twice as wide in pixels
    assert float(wide[10, 14]) == pytest.approx(np.exp(-0.5), rel=1e-5)
    assert render_clicks([], (4, 4), (4, 4), 2.0).abs().sum() == 0


def test_next_click_picks_the_largest_error_region_interior():
    label = np.zeros((20, 20), bool)
    label[2:12, 2:12] = True  # missed entirely: 100 pixels
    pred = np.zeros((20, 20), bool)
    pred[15:18, 15:18] = True  # false positive: 9 pixels
    kind, point = next_click(pred, label)
    assert kind == "foreground" and 6 <= point[0] <= 7 and 6 <= point[1] <= 7
    kind, point = next_click(pred | label, label)
    assert kind == "background" and point == [16, 16]
    assert next_click(label, label) is None
    kind, point = next_click(pred, label, np.random.default_rng(0))
    assert kind == "foreground" and label[tuple(point)]


def test_add_click_guidance_channels_and_errors():
    image = MetaTensor(torch.rand(3, 16, 12), meta={"filename_or_obj": "img.png"})
    t = AddClickGuidanced("image", LABELS, image_size=(8, 6), sigma=1.0)
    out = t({"image": image, "foreground": [[4, 4]], "background": [[10, 2]]})["image"]
    assert out.shape == (5, 16, 12) and isinstance(out, MetaTensor)
    assert torch.equal(out[:3], image.as_tensor())
    assert float(out[3, 4, 4]) == pytest.approx(1.0) and float(out[4, 10, 2]) == pytest.approx(1.0)
    auto = t({"image": image})["image"]
    assert auto[3:].abs().sum() == 0
    with pytest.raises(ValueError, match="img.png.*outside the image"):
        t({"image": image, "background": [[16, 0]]})


def test_read_clicks_file(tmp_path):
    good = tmp_path / "c.json"
    good.write_text(json.dumps({"a.png": {"foreground": [[1, 2]]}}))
    assert read_clicks_file(good) == {"a.png": {"foreground": [[1, 2]]}}
    assert read_clicks_file(None) == {}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"a.png": {"fg": [[1, 2]]}}))
    with pytest.raises(ValueError, match="bad.json.*fg"):
        read_clicks_file(bad)
    bad.write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        read_clicks_file(bad)
