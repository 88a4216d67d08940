"""The app's two small operators around the SDK's bundle operator: read each input image as the bundle does, and
write each mask as ``monai.bundle run`` does (``<name>_mask.png``, 0/255, in (H, W) order)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from monai.deploy.core import Fragment, Image, Operator, OperatorSpec
from PIL import Image as PILImage

from vmunetv2_monai.data import LoadImaged, list_images
from vmunetv2_monai.data.datalist import image_stem
from vmunetv2_monai.files import atomic_write

logger = logging.getLogger(__name__)


def input_files(input_path: str | Path) -> list[dict[str, str]]:
    """The images to segment as ``{"image": path, "name": stem}``: ``input_path`` itself when it is a file, else the
    image files of that folder (or of its ``images/`` subfolder), sorted, as ``configs/inference.json`` lists its
    ``dataset_dir``."""
    path = Path(input_path)
    if path.is_file():
        return [{"image": str(path), "name": image_stem(path)}]
    items = list_images(path)
    if not items:
        raise FileNotFoundError(f"no image files in input folder {path}")
    return items


class ImageLoaderOperator(Operator):
    """Emit one input image per call as a Deploy ``Image``: the array and metadata of the bundle's own
    ``LoadImaged`` (the ``read_transforms`` head that the bundle operator drops), i.e. (W, H, C) with
    ``original_channel_dim`` = -1, so the operator's ``EnsureChannelFirstd`` sees what ``monai.bundle run`` sees.
    Schedule it with ``CountCondition(len(files))``."""

    def __init__(self, fragment: Fragment, *args: Any, files: list[dict[str, str]], **kwargs: Any) -> None:
        self.files = list(files)
        self._next = 0
        self._load = LoadImaged(keys="image")
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("image")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        item = self.files[self._next]
        self._next += 1
        img = self._load({"image": item["image"]})["image"]
        logger.info("read %s %s", item["image"], tuple(img.shape))
        op_output.emit(Image(img.numpy(), metadata={**img.meta, "name": item["name"]}), "image")


class MaskWriterOperator(Operator):
    """Write each received mask ``Image`` (a (W, H) 0/1 array, MONAI's reader axes) to
    ``<output_dir>/<name>_mask.png`` as 0/255 in (H, W) order; ``name`` (the input file's stem) comes with the
    image's metadata through the bundle operator."""

    def __init__(self, fragment: Fragment, *args: Any, output_dir: str | Path, **kwargs: Any) -> None:
        self.output_dir = Path(output_dir)
        self.written: list[Path] = []
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("pred")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        pred = op_input.receive("pred")
        mask = np.asarray(pred.asnumpy())
        if mask.ndim != 2:
            raise ValueError(f"expected a 2D mask, got shape {mask.shape}")
        name = Path(str(pred.metadata().get("name", ""))).name
        if not name:
            raise ValueError("the mask's metadata has no 'name' (the input file's stem)")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        out = self.output_dir / f"{name}_mask.png"
        png = PILImage.fromarray((np.ascontiguousarray(mask.T) > 0).astype(np.uint8) * 255)
        atomic_write(out, lambda tmp: png.save(tmp, format="PNG"))
        self.written.append(out)
        logger.info("wrote %s (%d lesion pixels)", out, int((mask > 0).sum()))
