"""Write predicted masks (PNG, or NIfTI for NIfTI inputs) at the input's size and an overlay PNG per image.

PNGs are written by MONAI's ``SaveImage`` with ``PILWriter``, which maps MONAI's spatial axes (X = width, as
MONAI's readers load a PNG) back to the file's rows and columns, so a mask has the orientation of its input.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import PILWriter
from monai.transforms import SaveImage
from skimage.morphology import dilation, disk
from skimage.segmentation import find_boundaries

from ..data.inputs import prediction_names
from ..files import atomic_write

__all__ = ["PredictionWriter", "overlay_contour"]

logger = logging.getLogger(__name__)


def _to_display(image: np.ndarray) -> np.ndarray:
    """(C, X, Y) float image -> (X, Y, 3) uint8, min-max stretched per image."""
    img = image.astype(np.float32)
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(img)
    img = img[:3] if img.shape[0] >= 3 else np.repeat(img[:1], 3, axis=0)
    return np.ascontiguousarray(np.moveaxis(img, 0, -1)).astype(np.uint8)


def _png_saver(scale: int | None, channel_dim: int) -> SaveImage:
    """MONAI's PNG writing: ``SaveImage`` + ``PILWriter`` (uint8; ``scale=255`` maps a 0/1 mask to 0/255)."""
    return SaveImage(output_ext=".png", writer=PILWriter, output_dtype=np.uint8, scale=scale,
                     channel_dim=channel_dim, resample=False, print_log=False, savepath_in_metadict=False)


def _save_png(saver: SaveImage, array: np.ndarray, path: str) -> None:
    """Write ``array`` with ``saver`` to ``path`` atomically (``SaveImage`` adds the ``.png`` suffix itself)."""
    atomic_write(path, lambda tmp: saver(array, filename=tmp.removesuffix(".png")))


def overlay_contour(
    rgb: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 0, 0), width: int = 2
) -> np.ndarray:
    """Draw the outline of a binary mask on an image.

    Args:
        rgb: ``(H, W, 3)`` uint8 image (any two spatial axes, in the mask's order).
        mask: ``(H, W)`` binary mask.
        color: the outline's RGB colour.
        width: outline width in pixels.

    Returns:
        A new ``(H, W, 3)`` array.
    """
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
    each batch item. Spatial axes follow MONAI's readers (X = width for PNG/JPG); PNGs go through MONAI's
    ``SaveImage`` + ``PILWriter``, which writes them back as rows = Y. MONAI's ``SaveImaged`` is not used as a
    post-processing transform because the file name comes from the item's ``name``, the format from its input
    (NIfTI in, NIfTI out), every file is written atomically, and the bundle's ``postprocessing`` also serves
    MONAI Label and Deploy, which must not write files.

    Args:
        output_dir: folder for the files.
        overlay: also write ``<name>_overlay.png``.
    """

    def __init__(self, output_dir: str | os.PathLike, overlay: bool = True) -> None:
        self.output_dir = os.fspath(output_dir)
        self.overlay = overlay
        self._mask_saver = _png_saver(scale=255, channel_dim=0)
        self._overlay_saver = _png_saver(scale=None, channel_dim=-1)

    def attach(self, engine: Engine) -> None:
        """Write every iteration's predictions.

        Args:
            engine: the evaluator (with ``decollate=True``).
        """
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Write the files of the engine's current batch.

        Args:
            engine: the evaluator.

        Raises:
            TypeError: when the outputs are not decollated.
        """
        batch, outputs = engine.state.batch, engine.state.output
        if not isinstance(outputs, list):
            raise TypeError("PredictionWriter needs decollated outputs (the evaluator's decollate=True)")
        for item, out in zip(batch, outputs, strict=True):
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
            _save_png(self._mask_saver, mask[None], mask_name)
        if overlay_name:
            rgb = _to_display(torch.as_tensor(image).detach().cpu().numpy())
            _save_png(self._overlay_saver, overlay_contour(rgb, mask), overlay_name[0])
        logger.debug("wrote predictions for %s to %s", name, self.output_dir)
