"""The MONAI Label app: one VM-UNetV2 bundle served for 2D images, with training and active learning.

App options (``--conf KEY VALUE`` of ``monailabel start_server``):

- ``bundle``: the bundle folder (default: ``bundle/`` of a source checkout of this package, when there is one).
- ``model_name``: the model's name in the REST API (default ``vmunetv2``).
- ``preload``: load the network at start-up (default false).
- ``skip_trainers``: serve inference only (default false).
- ``uncertainty_max_images``: how many unlabelled images the ``uncertainty`` strategy scores per call (default 16).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monai.transforms import LoadImage
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.generic import strtobool

from .bundle_config import BundleError, BundleFiles
from .infer import InferRequestError, NoWeightsError, VMUNetV2InferTask
from .strategies import SigmoidEntropy
from .train import TrainRequestError, VMUNetV2TrainTask

__all__ = ["VMUNetV2LabelApp", "default_bundle_dir"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "vmunetv2"


def default_bundle_dir() -> Path | None:
    """``bundle/`` beside the package in a source checkout (editable install), or None."""
    candidate = Path(__file__).resolve().parents[2] / "bundle"
    return candidate if (candidate / "configs" / "metadata.json").is_file() else None


_TAG = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class CheckedLocalDatastore(LocalDatastore):
    """MONAI Label's local datastore, refusing label tags that are not plain names (a tag becomes a folder name)."""

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Save a label; HTTP 400 for a tag such as ``../x``, 404 for an image that is not in the datastore."""
        if not isinstance(label_tag, str) or not _TAG.match(label_tag):
            raise HTTPException(status_code=400, detail=f"label tag must be letters, digits, '_' or '-': {label_tag!r}")
        if image_id not in self.list_images():
            raise HTTPException(status_code=404, detail=f"image {image_id!r} is not in the datastore")
        return super().save_label(image_id, label_filename, label_tag, label_info)


def _is_upload(path: str) -> bool:
    """True for the temporary file MONAI Label's ``/infer`` endpoint writes for an uploaded image."""
    p = Path(path)
    return p.parent == Path(tempfile.gettempdir()) and p.name.startswith("tmp") and p.is_file()


class VMUNetV2LabelApp(MONAILabelApp):
    """MONAI Label app for the VM-UNetV2 bundle (2D RGB endoscopy / dermoscopy images, binary masks)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        conf = dict(conf or {})
        bundle_dir = conf.get("bundle") or default_bundle_dir()
        if not bundle_dir:
            raise BundleError("no bundle folder: pass --conf bundle <path to the VM-UNetV2 bundle>")
        self.bundle = BundleFiles.from_dir(bundle_dir)
        self.model_name = conf.get("model_name", DEFAULT_MODEL_NAME)
        logger.info("VM-UNetV2 MONAI Label app: model %r from bundle %s", self.model_name, self.bundle.root)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="VM-UNetV2",
            description="VM-UNetV2 segmentation of 2D RGB images (endoscopy, dermoscopy)",
            version=self._bundle_version(),
        )

    def _bundle_version(self) -> str:
        from .bundle_config import load_metadata

        return str(load_metadata(self.bundle).get("version", ""))

    def init_datastore(self) -> Datastore:
        """Local studies folder (with checked label tags); remote datastores as MONAI Label sets them up."""
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return CheckedLocalDatastore(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    # --------------------------------------------------------------------------------------------------- tasks
    def init_infers(self) -> dict[str, InferTask]:
        preload = bool(strtobool(self.conf.get("preload", "false")))
        return {self.model_name: VMUNetV2InferTask(self.bundle, self.conf, preload=preload)}

    def init_trainers(self) -> dict[str, TrainTask]:
        if strtobool(self.conf.get("skip_trainers", "false")):
            return {}
        return {self.model_name: VMUNetV2TrainTask(self.bundle, self.conf)}

    def init_strategies(self) -> dict[str, Strategy]:
        max_images = int(self.conf.get("uncertainty_max_images", "16"))
        return {
            "random": Random(),
            "first": First(),
            "uncertainty": SigmoidEntropy(lambda: self._infers[self.model_name], max_images=max_images),
        }

    # ------------------------------------------------------------------------------------ request checking
    def infer(self, request: dict[str, Any], datastore: Any = None) -> dict[str, Any]:
        """Check the model, the image and the parameters (4xx with a reason), then run MONAI Label's infer."""
        model = request.get("model")
        task = self._infers.get(model) if isinstance(model, str) else None
        if task is None:
            raise HTTPException(status_code=404, detail=f"unknown model {model!r}; available: {sorted(self._infers)}")
        ds = datastore if datastore else self.datastore()
        image = request.get("image")
        if not isinstance(image, str) or not image:
            raise HTTPException(
                status_code=400, detail="no image: give an image id from the datastore or upload a file"
            )
        if _is_upload(image):
            path = image
        elif image in ds.list_images():
            path = ds.get_image_uri(image)
        else:
            raise HTTPException(status_code=404, detail=f"image {image!r} is not in the datastore")
        try:
            task.validate_request(request)
        except InferRequestError as e:
            raise HTTPException(status_code=400, detail=str(e)) from e
        self._check_readable(path, image)
        try:
            return super().infer(request, datastore)
        except InferRequestError as e:
            raise HTTPException(status_code=400, detail=str(e)) from e
        except NoWeightsError as e:
            raise HTTPException(status_code=409, detail=str(e)) from e

    @staticmethod
    def _check_readable(path: str, image: str) -> None:
        """Raise HTTP 400 when MONAI cannot read the image file."""
        try:
            LoadImage(image_only=True)(path)
        except Exception as e:  # any reader failure means the client sent something that is not an image
            logger.warning("Unreadable image %r: %s", image, e)
            raise HTTPException(
                status_code=400, detail=f"cannot read image {os.path.basename(image)!r} as an image: {e}"
            ) from e

    def train(self, request: dict[str, Any]) -> Any:
        """Check the model and the parameters (4xx with a reason), then run MONAI Label's training."""
        model = request.get("model")
        task = self._trainers.get(model) if isinstance(model, str) else None
        if task is None:
            raise HTTPException(status_code=404, detail=f"unknown model {model!r}; available: {sorted(self._trainers)}")
        try:
            task.validate_request(request)
        except TrainRequestError as e:
            raise HTTPException(status_code=400, detail=str(e)) from e
        if not self.datastore().datalist():
            raise HTTPException(
                status_code=409, detail="no labelled images: save final labels (PUT /datastore/label) before training"
            )
        return super().train(request)
