"""The MONAI Label app: MONAI Label's stock bundle tasks on one VM-UNetV2 bundle, plus what the stock app lacks.

The stock ``monaibundle`` app serves the bundle unchanged (``docs/label.md``). This app serves it with the same
stock tasks and adds: the ``uncertainty`` active-learning strategy, 4xx answers with a reason for requests the
stock app answers with 500 or serves anyway (unknown image or model 404, unreadable image or bad parameter 400,
missing weights or no labels 409), weights read by the package's checkpoint reader, and the training report
(:mod:`.infer`, :mod:`.train`, :mod:`.strategies`; the HTTP-level answers are :mod:`.server`).

App options (``--conf KEY VALUE`` of ``monailabel start_server``):

- ``bundle``: the bundle folder (default: ``bundle/`` of this source checkout).
- ``model_name``: the model's name in the REST API (default ``vmunetv2``).
- ``preload``: load the network at start-up (default false).
- ``skip_trainers``: serve inference only (default false).
- ``uncertainty_max_images``: how many unlabelled images the ``uncertainty`` strategy scores per call (default 16).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monai.transforms import LoadImage
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.generic import strtobool

from ..bundle.opener import Bundle
from ..errors import check_config_files
from .infer import InferRequestError, NoWeightsError, VMUNetV2InferTask
from .strategies import SigmoidEntropy
from .train import TrainRequestError, VMUNetV2TrainTask

__all__ = ["VMUNetV2LabelApp"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "vmunetv2"


def _is_upload(path: str) -> bool:
    """True for the temporary file MONAI Label's ``/infer`` endpoint writes for an uploaded image."""
    p = Path(path)
    return p.parent == Path(tempfile.gettempdir()) and p.name.startswith("tmp") and p.is_file()


class VMUNetV2LabelApp(MONAILabelApp):
    """MONAI Label app for the VM-UNetV2 bundle (2D RGB endoscopy / dermoscopy images, binary masks).

    Args:
        app_dir: the app folder (MONAI Label writes ``logs/``, ``model/``, ``lib/`` and ``bin/`` there).
        studies: the datastore (a local folder of images, or a remote one as MONAI Label sets it up).
        conf: the ``--conf`` options listed in the module docstring.

    Raises:
        BundleFileError: the bundle's ``configs/metadata.json`` or ``configs/inference.json`` is missing or not
            valid JSON (named).
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        conf = dict(conf or {})
        bundle = Bundle(conf.get("bundle") or None)  # None: bundle/ of this checkout
        self.bundle_root = bundle.root
        check_config_files(bundle.metadata_path, bundle.configs_dir / "inference.json")
        version = str(bundle.metadata.get("version", ""))
        self.model_name = conf.get("model_name", DEFAULT_MODEL_NAME)
        logger.info("VM-UNetV2 MONAI Label app: model %r from bundle %s", self.model_name, self.bundle_root)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="VM-UNetV2",
            description="VM-UNetV2 segmentation of 2D RGB images (endoscopy, dermoscopy)",
            version=version,
        )

    def init_infers(self) -> dict[str, InferTask]:
        """The bundle's inference task; none (logged) while ``models/model.pt`` is missing, as in the stock app.

        Returns:
            model name -> task.
        """
        task = VMUNetV2InferTask(self.bundle_root, self.conf)
        if not task.is_valid():
            logger.warning("%s: no %s yet, so no inference model: train it, then restart the server",
                           self.model_name, self.bundle_root / "models" / "model.pt")
            return {}
        return {self.model_name: task}

    def init_trainers(self) -> dict[str, TrainTask]:
        """The bundle's training task, unless ``skip_trainers``.

        Returns:
            model name -> task.
        """
        if strtobool(self.conf.get("skip_trainers", "false")):
            return {}
        return {self.model_name: VMUNetV2TrainTask(self.bundle_root, self.conf)}

    def init_strategies(self) -> dict[str, Strategy]:
        """``random`` and ``first`` (MONAI Label's) and ``uncertainty`` (:class:`.SigmoidEntropy`).

        Returns:
            strategy name -> strategy.
        """
        max_images = int(self.conf.get("uncertainty_max_images", "16"))
        return {
            "random": Random(),
            "first": First(),
            "uncertainty": SigmoidEntropy(lambda: self._infer_task(self.model_name), max_images=max_images),
        }

    def _infer_task(self, model: Any) -> VMUNetV2InferTask:
        """The inference task ``model``; HTTP 404 naming the models there are."""
        task = self._infers.get(model) if isinstance(model, str) else None
        if task is None:
            raise HTTPException(status_code=404, detail=f"unknown model {model!r}; available: {sorted(self._infers)}")
        return task

    def infer(self, request: dict[str, Any], datastore: Any = None) -> dict[str, Any]:
        """Check the model, the image and the parameters (4xx with a reason), then run MONAI Label's infer.

        Args:
            request: the ``/infer`` request (``model``, ``image``: an id in the datastore or an uploaded file).
            datastore: the datastore (default: the app's).

        Returns:
            MONAI Label's result (mask file and result JSON).

        Raises:
            HTTPException: 404 unknown model or image, 400 no image, an unreadable image or a bad parameter, 409 no
                weights.
        """
        task = self._infer_task(request.get("model"))
        ds = datastore if datastore else self.datastore()
        image = request.get("image")
        if not isinstance(image, str) or not image:
            detail = "no image: give an image id from the datastore or upload a file"
            raise HTTPException(status_code=400, detail=detail)
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
        try:
            LoadImage(image_only=True)(path)
        except Exception as e:  # any reader failure means the client sent something that is not an image
            logger.warning("Unreadable image %r: %s", image, e)
            raise HTTPException(
                status_code=400, detail=f"cannot read image {os.path.basename(image)!r} as an image: {e}"
            ) from e
        try:
            return super().infer(request, datastore)
        except InferRequestError as e:
            raise HTTPException(status_code=400, detail=str(e)) from e
        except NoWeightsError as e:
            raise HTTPException(status_code=409, detail=str(e)) from e

    def train(self, request: dict[str, Any]) -> Any:
        """Check the model and the parameters (4xx with a reason), then run MONAI Label's training.

        Args:
            request: the ``/train`` request.

        Returns:
            MONAI Label's answer (the task's report with ``run_sync``).

        Raises:
            HTTPException: 404 unknown model, 400 a bad parameter, 409 no final labels.
        """
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
