"""Click guidance for the interactive (DeepEdit-type) VM-UNetV2: checking clicks, rendering them as guidance
channels, and the simulated annotator's next click.

A click is a point ``[i, j]`` in the array coordinates of the image as MONAI's reader loads it (for PNG/JPEG the
first index runs along the width, the second along the height: the order MONAI Label's clients send). Guidance is
two channels, foreground then background, appended to the image channels: each click is a Gaussian bump of height 1
(the maximum over clicks of one kind), its width ``sigma`` given in pixels of the network's grid (``image_size``), so
a click covers the same share of the image whatever the input resolution.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

try:  # MONAI Label's server (FastAPI on starlette) answers a starlette HTTPException with its status and message
    from starlette.exceptions import HTTPException as _HTTPError
except ImportError:  # pragma: no cover - an environment without starlette
    class _HTTPError(Exception):  # type: ignore[no-redef]
        """Stand-in base where starlette is absent."""

__all__ = ["MAX_CLICKS", "ClickError", "check_clicks", "next_click", "read_clicks", "read_clicks_file",
           "render_clicks"]

MAX_CLICKS = 64
"""Clicks of one kind accepted in one request: more is refused as a client error, not silently cut."""


class ClickError(ValueError, _HTTPError):
    """A bad click: a ``ValueError`` whose message names the image and the click.

    It is also a starlette ``HTTPException`` (status 400) where starlette is installed: MONAI Label's stock server
    runs the bundle's preprocessing inside its ``/infer`` endpoint, and FastAPI answers such an exception with
    ``400 {"detail": message}`` instead of an anonymous ``500 Internal Server Error``.

    Args:
        message: what is wrong, naming the image and the click (also the HTTP answer's ``detail``).
    """

    def __init__(self, message: str) -> None:
        ValueError.__init__(self, message)
        self.status_code = 400
        self.detail = message
        self.headers = None

    def __str__(self) -> str:
        return self.detail


def check_clicks(clicks: Any, spatial_shape: Sequence[int], kind: str, source: str = "request") -> list[list[int]]:
    """Validate clicks of one kind and return them as ``[[i, j], ...]``.

    Args:
        clicks: a sequence of points, each a sequence of ``len(spatial_shape)`` non-negative integers (integral
            floats such as ``12.0`` are accepted, ``12.5`` is not), or None / empty for no clicks.
        spatial_shape: the image's spatial shape, e.g. (W, H).
        kind: the click kind ("foreground", "background" or a label name), named in errors.
        source: what the clicks came from (an image name), named in errors.

    Returns:
        The points as lists of ints (empty without clicks).

    Raises:
        ClickError: (a ``ValueError``) naming ``source``, ``kind`` and the offending value: a point that is not a
            pair of integers, a negative or out-of-image coordinate, or more than :data:`MAX_CLICKS` points.
    """
    if clicks is None:
        return []
    if isinstance(clicks, np.ndarray | torch.Tensor):
        clicks = clicks.tolist()
    if isinstance(clicks, str | bytes) or not isinstance(clicks, Sequence):
        raise ClickError(f"{source}: {kind} clicks must be a list of [i, j] points, got {clicks!r}")
    if len(clicks) > MAX_CLICKS:
        raise ClickError(f"{source}: {len(clicks)} {kind} clicks, more than the {MAX_CLICKS} accepted")
    points = []
    for point in clicks:
        if isinstance(point, str | bytes) or not isinstance(point, Sequence) or len(point) != len(spatial_shape):
            raise ClickError(f"{source}: {kind} click {point!r} is not a point of {len(spatial_shape)} coordinates")
        coords = []
        for value, size in zip(point, spatial_shape, strict=True):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                    or value != int(value):
                raise ClickError(f"{source}: {kind} click {list(point)!r} has a coordinate that is not a whole "
                                 f"number of pixels")
            if not 0 <= value < size:
                raise ClickError(f"{source}: {kind} click {list(point)!r} lies outside the image "
                                 f"(shape {list(spatial_shape)})")
            coords.append(int(value))
        points.append(coords)
    return points


def render_clicks(
    clicks: Sequence[Sequence[float]], spatial_shape: Sequence[int], grid_shape: Sequence[int], sigma: float,
) -> torch.Tensor:
    """One guidance channel: a Gaussian bump of height 1 at each click (the maximum where bumps overlap).

    Args:
        clicks: points in the pixel coordinates of ``spatial_shape``.
        spatial_shape: the channel's spatial shape (the image as given), e.g. (W, H).
        grid_shape: the network's input grid (``image_size``); ``sigma`` is in its pixels, so the bump's width in
            this image's pixels is ``sigma * spatial_shape / grid_shape`` along each axis.
        sigma: the bump's standard deviation in grid pixels.

    Returns:
        float32 tensor of shape ``spatial_shape`` (zeros without clicks).
    """
    out = torch.zeros(tuple(int(s) for s in spatial_shape), dtype=torch.float32)
    if not clicks:
        return out
    axes = [torch.arange(int(s), dtype=torch.float32) for s in spatial_shape]
    widths = [sigma * float(s) / float(g) for s, g in zip(spatial_shape, grid_shape, strict=True)]
    for point in clicks:
        profiles = [torch.exp(-0.5 * ((axis - float(p)) / w) ** 2)
                    for axis, p, w in zip(axes, point, widths, strict=True)]
        bump = profiles[0]
        for profile in profiles[1:]:
            bump = bump[..., None] * profile
        torch.maximum(out, bump, out=out)
    return out


def next_click(
    pred: np.ndarray, label: np.ndarray, rng: np.random.Generator | None = None,
) -> tuple[str, list[int]] | None:
    """The simulated annotator's click: inside the largest connected error region.

    Args:
        pred: boolean prediction of shape (W, H).
        label: boolean reference mask of the same shape.
        rng: None: the region's interior point (the maximum of its distance transform; the first in array order on
            ties), as the click benchmark does. A generator: a random point of the region's inner half (distance at
            least half the maximum), for varied training clicks.

    Returns:
        ("foreground", point) for a missed region, ("background", point) for a false one, None when pred == label.
    """
    best: tuple[int, str, np.ndarray] | None = None
    for kind, error in (("foreground", label & ~pred), ("background", pred & ~label)):
        regions, count = ndimage.label(error)
        if count == 0:
            continue
        sizes = np.bincount(regions.ravel())[1:]
        index = int(np.argmax(sizes)) + 1
        if best is None or sizes[index - 1] > best[0]:
            best = (int(sizes[index - 1]), kind, regions == index)
    if best is None:
        return None
    _, kind, region = best
    distance = ndimage.distance_transform_edt(np.pad(region, 1))[(slice(1, -1),) * region.ndim]
    if rng is None:
        flat = int(np.argmax(distance))
    else:
        candidates = np.flatnonzero(distance >= 0.5 * distance.max())
        flat = int(rng.choice(candidates))
    return kind, [int(c) for c in np.unravel_index(flat, region.shape)]


def read_clicks(
    data: Mapping[str, Any], label_names: Mapping[str, int], spatial_shape: Sequence[int], source: str = "request",
) -> tuple[list[list[int]], list[list[int]]]:
    """Checked foreground and background clicks from a request or data-list item.

    Foreground clicks are read from ``"foreground"`` (CVAT, our data lists) and from the key of each non-background
    label name (3D Slicer and OHIF send the label's name); background clicks from ``"background"``. Each is checked
    by :func:`check_clicks`.

    Args:
        data: the request or data-list item.
        label_names: the model's labels, name -> value (a ``"background"`` name or value 0 is not a foreground key).
        spatial_shape: the image's spatial shape, e.g. (W, H).
        source: what the clicks came from (an image name), named in errors.

    Returns:
        ``(foreground, background)``, each a list of ``[i, j]`` points.

    Raises:
        ClickError: (a ``ValueError``) a click fails :func:`check_clicks`, there are more than :data:`MAX_CLICKS`
            foreground clicks in all, or another key holds points (a list of coordinate pairs) for a label the
            model does not have. (``data["label"]`` is not read: MONAI Label puts an uploaded label file's path
            there, and training items their mask.)
    """
    names = [n for n, v in label_names.items() if n.lower() != "background" and v != 0]
    known = {"foreground", "background", *label_names}
    for key, value in data.items():
        if key not in known and _looks_like_points(value, len(spatial_shape)):
            raise ClickError(f"{source}: clicks under {key!r}, a label this model does not have "
                             f"(foreground clicks go under 'foreground' or {', '.join(repr(n) for n in names)}; "
                             f"background clicks under 'background')")
    foreground = [p for key in ("foreground", *names) for p in check_clicks(data.get(key), spatial_shape, key, source)]
    if len(foreground) > MAX_CLICKS:
        raise ClickError(f"{source}: {len(foreground)} foreground clicks, more than the {MAX_CLICKS} accepted")
    return foreground, check_clicks(data.get("background"), spatial_shape, "background", source)


def _looks_like_points(value: Any, ndim: int) -> bool:
    """True for a non-empty list of coordinate lists of length ``ndim`` (how clicks arrive)."""
    if isinstance(value, np.ndarray | torch.Tensor):  # images and labels are arrays too: judge by shape only
        return value.ndim == 2 and 0 < value.shape[0] and value.shape[1] == ndim
    if not isinstance(value, list | tuple) or not value:
        return False
    return all(isinstance(p, list | tuple) and len(p) == ndim and all(isinstance(c, int | float) for c in p)
               for p in value)


def read_clicks_file(path: str | os.PathLike | None) -> dict[str, dict[str, Any]]:
    """Clicks for ``monai.bundle run``: a JSON object mapping image file names to
    ``{"foreground": [[i, j], ...], "background": [[i, j], ...]}`` (either may be absent).

    The points themselves are checked against each image when it is read
    (:class:`~vmunetv2_monai.interactive.AddClickGuidanced`); this checks the file's shape.

    Args:
        path: the JSON file (UTF-8, a byte order mark is allowed); None or an empty path gives no clicks.

    Returns:
        ``{image file name: {"foreground": ..., "background": ...}}`` as read.

    Raises:
        ValueError: naming ``path``: not JSON, not an object of objects, or a key other than foreground/background.
    """
    if path is None or str(path) == "":
        return {}
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"clicks file {path}: cannot be read as JSON ({err})") from err
    if not isinstance(content, dict) or not all(isinstance(v, dict) for v in content.values()):
        raise ValueError(f"clicks file {path}: expected {{image file name: {{'foreground': [[i, j], ...], "
                         f"'background': [[i, j], ...]}}}}")
    for name, entry in content.items():
        unknown = sorted(set(entry) - {"foreground", "background"})
        if unknown:
            raise ValueError(f"clicks file {path}: {name} has key(s) {', '.join(unknown)}; only 'foreground' and "
                             "'background' are read")
    return content
