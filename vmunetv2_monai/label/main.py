"""Entry point for ``monailabel start_server --app <this folder>``: MONAI Label loads the app class from here."""

from vmunetv2_monai.label.app import VMUNetV2LabelApp

__all__ = ["VMUNetV2LabelApp"]
