"""``AddClickGuidanced``: the interactive model's click channels, from a request or a data-list item."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from .clicks import read_clicks, render_clicks

__all__ = ["AddClickGuidanced"]


class AddClickGuidanced(MapTransform):
    """Append foreground and background click channels to the image: ``(C, *S)`` becomes ``(C + 2, *S)``.

    Clicks are read from the data (see :func:`~vmunetv2_monai.interactive.clicks.read_clicks`: ``"foreground"`` or
    a label name, and ``"background"``), in the image's array coordinates, and checked: a click outside the image,
    a fractional or negative coordinate, too many clicks, or clicks for a label the model lacks raise a
    ``ValueError`` naming the image and the click. Without clicks both channels are zero, and the interactive model
    segments automatically. MONAI's ``monai.apps.deepedit`` click transforms are 3-D only and truncate or clip bad
    clicks silently, hence this transform; it renders clicks with
    :func:`~vmunetv2_monai.interactive.clicks.render_clicks`, as the training's click simulation does.

    Args:
        keys: the image key.
        label_names: the model's labels, name -> value (MONAI Label's ``label_names``).
        image_size: the network's input grid; ``sigma`` is in its pixels.
        sigma: the click bump's standard deviation in grid pixels.
        use_clicks: False: both channels stay zero whatever the data holds (the automatic mask; MONAI Label's stock
            app sets the config id ``use_click`` False for the ``<name>_seg`` model and True for the DeepEdit one).
        allow_missing_keys: MONAI's ``MapTransform`` option.
    """

    def __init__(
        self, keys: KeysCollection, label_names: Mapping[str, int], image_size: Sequence[int], sigma: float = 3.0,
        use_clicks: bool = True, allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_names = dict(label_names)
        self.image_size = tuple(int(s) for s in image_size)
        self.sigma = float(sigma)
        self.use_clicks = bool(use_clicks)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            spatial = tuple(image.shape[1:])
            meta = image.meta if isinstance(image, MetaTensor) else {}
            source = str(meta.get("filename_or_obj") or d.get("image_path") or key)
            foreground, background = read_clicks(d, self.label_names, spatial, source) if self.use_clicks else ([], [])
            guidance = torch.stack([render_clicks(c, spatial, self.image_size, self.sigma)
                                    for c in (foreground, background)])
            plain = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
            out = torch.cat([plain, guidance.to(plain.device, plain.dtype)])
            if isinstance(image, MetaTensor):
                out = MetaTensor(out).copy_meta_from(image)
            d[key] = out
        return d
