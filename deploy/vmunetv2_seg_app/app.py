"""VM-UNetV2 polyp segmentation as a MONAI Deploy application (monai-deploy-app-sdk 4.0.0).

Run it as the SDK runs an app locally, from any folder::

    python deploy/vmunetv2_seg_app -i IMAGES -o OUT -m MODEL      # or python deploy/vmunetv2_seg_app/app.py ...

``-i``: an image file or a folder of images; ``-o``: where ``<name>_mask.png`` (0/255) go; ``-m``: a bundle folder,
its ``models/model.pt`` (or another state dict in ``<bundle>/models/``) or an exported ``model.ts`` (default
``models``, or ``HOLOSCAN_MODEL_PATH``; see ``model_path.py``). The inference is the SDK's
``MonaiBundleInferenceOperator`` running the bundle's ``configs/inference.json`` (``preprocessing``, ``inferer``,
``postprocessing_channel_first``), so the masks equal ``python -m monai.bundle run --config_file
configs/inference.json`` on the same images.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script or a folder (python app.py, python <app folder>, a MAP)
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from io_operators import ImageLoaderOperator, MaskWriterOperator, input_files
from model_path import CONFIG_NAME, ModelPathError, resolve_model
from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application, Image, IOType
from monai.deploy.operators.monai_bundle_inference_operator import (
    BundleConfigNames,
    IOMapping,
    MonaiBundleInferenceOperator,
)

logger = logging.getLogger(__name__)

#: The bundle's 1 x H x W mask: the 4.0.0 operator squeezes the channel axis itself (docs/deploy.md).
CONFIG_NAMES = BundleConfigNames(config_names=[CONFIG_NAME], postproc_name="postprocessing_channel_first")


class VMUNetV2SegApp(Application):
    """Read images (-i), segment them with the bundle operator on the model -m, write the masks (-o)."""

    def compose(self) -> None:
        app_context: AppContext = Application.init_app_context(self.argv)  # -i/-o/-m, HOLOSCAN_* variables
        resolved = resolve_model(app_context.model_path)
        app_context.models = resolved.model  # None: the operator loads the bundle folder itself
        files = input_files(app_context.input_path)
        logger.info("%d image(s) from %s, model %s (%s)", len(files), app_context.input_path,
                    resolved.bundle_path, resolved.kind)
        loader = ImageLoaderOperator(self, CountCondition(self, len(files)), files=files, name="image_loader")
        bundle_op = MonaiBundleInferenceOperator(
            self,
            app_context=app_context,
            input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
            output_mapping=[IOMapping("pred", Image, IOType.IN_MEMORY)],
            bundle_path=resolved.bundle_path,
            bundle_config_names=CONFIG_NAMES,
            name="vmunetv2_bundle",
        )
        writer = MaskWriterOperator(self, output_dir=app_context.output_path, name="mask_writer")
        self.add_flow(loader, bundle_op, {("image", "image")})
        self.add_flow(bundle_op, writer, {("pred", "pred")})


def main() -> int:
    """Run the app; a model or input path it cannot use ends it with the error naming the path (exit status 2)."""
    try:
        VMUNetV2SegApp().run()
    except (ModelPathError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
