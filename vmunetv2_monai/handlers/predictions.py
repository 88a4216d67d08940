"""Write predicted masks (PNG, or NIfTI for NIfTI inputs) at the input's size and an overlay PNG per image."""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from ignite.engine import Engine, Events
from PIL import Image
from skimage.morphology import dilation, disk
from skimage.segmentation import find_boundaries

from ..files import atomic_write

__all__ = ["PredictionWriter", "overlay_contour", "prediction_names"]

logger = logging.getLogger(__name__)


def _to_display(image: np.ndarray) -> np.ndarray:
    """(C, X, Y) float image -> (Y, X, 3) uint8, min-max stretched per image."""
    img = image.astype(np.float32)
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(img)
    img = img[:3] if img.shape[0] >= 3 else np.repeat(img[:1], 3, axis=0)
    return np.ascontiguousarray(img.transpose(2, 1, 0)).astype(np.uint8)


def prediction_names(name: str, source: str, overlay: bool = True) -> tuple[str, ...]:
    """The file names :class:`PredictionWriter` writes for the image ``name`` read from the file ``source``:
    ``<name>_mask.png`` (``<name>_mask.nii.gz`` for a NIfTI ``source``) and, with ``overlay``,
    ``<name>_overlay.png``."""
    nifti = source.lower().endswith((".nii", ".nii.gz"))
    return (f"{name}_mask.nii.gz" if nifti else f"{name}_mask.png",) + ((f"{name}_overlay.png",) if overlay else ())


def overlay_contour(rgb: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 0, 0), width: int = 2):
    """Draw the outline of binary ``mask`` (H, W) on ``rgb`` (H, W, 3 uint8); returns a new array."""
    edge = find_boundaries(mask.astype(bool), mode="inner")
    if width > 1:
        edge = dilation(edge, disk(width // 2))
    out = rgb.copy()
    out[edge] = color
    return out


class PredictionWriter:
    """Per image: ``<output_dir>/<name>_mask.png`` (0/255) or ``<name>_mask.nii.gz`` (for NIfTI inputs, with the
    input's affine), and ``<name>_overlay.png`` (mask contour on the image). Files are written atomically.

    Expects decollated outputs with ``pred`` ((1, X, Y) or (X, Y) binary) and ``image`` (C, X, Y), and ``name`` in
    each batch item.
    Spatial axes follow MONAI's readers (X = width for PNG/JPG), so PNGs are transposed back to (H, W).
    """

    def __init__(self, output_dir: str | os.PathLike, overlay: bool = True) -> None:
        self.output_dir = os.fspath(output_dir)
        self.overlay = overlay

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        batch, outputs = engine.state.batch, engine.state.output
        if not isinstance(outputs, list):
            raise TypeError("PredictionWriter needs decollated outputs (the evaluator's decollate=True)")
        for item, out in zip(batch, outputs):
            self._write_one(item["name"], out)

    def _write_one(self, name: str, out: dict) -> None:
        pred = out["pred"]
        image = out["image"]
        pred = torch.as_tensor(pred).detach().cpu().numpy()
        mask = (pred.reshape(pred.shape[-2:]) > 0.5).astype(np.uint8)  # (1, X, Y) or the squeezed (X, Y)
        source = str(getattr(image, "meta", {}).get("filename_or_obj", ""))
        names = prediction_names(name, source, self.overlay)
        mask_name, *overlay_name = (os.path.join(self.output_dir, n) for n in names)
        if mask_name.endswith(".nii.gz"):
            import nibabel as nib

            affine = np.asarray(image.meta.get("original_affine", np.eye(4)), dtype=np.float64)
            atomic_write(mask_name, lambda tmp: nib.save(nib.Nifti1Image(mask, affine), tmp))
        else:
            mask_img = Image.fromarray(np.ascontiguousarray(mask.T) * 255)
            atomic_write(mask_name, lambda tmp: mask_img.save(tmp, format="PNG"))
        if overlay_name:
            rgb = _to_display(torch.as_tensor(image).detach().cpu().numpy())
            over = Image.fromarray(overlay_contour(rgb, mask.T))
            atomic_write(overlay_name[0], lambda tmp: over.save(tmp, format="PNG"))
        logger.debug("wrote predictions for %s to %s", name, self.output_dir)
