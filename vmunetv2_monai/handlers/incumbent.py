"""Training never makes the served model worse: the model already at the best saver's path (the incumbent) is
scored on the validation images before training, and only weights that score at least as well replace it."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping

import torch
from ignite.engine import Engine, Events

from ..checkpoints import read_checkpoint
from .checkpoint import AtomicCheckpointSaver
from .lineage import sidecar_path

__all__ = ["KeepBetterModel"]

logger = logging.getLogger(__name__)


class KeepBetterModel:
    """Score the incumbent model at ``saver.path`` when the trainer starts and make it ``saver``'s baseline.

    The incumbent's weights are loaded into ``network`` for one run of ``evaluator`` (an evaluator without
    handlers, on the same validation images and key metric as the training's validator), then the network's own
    weights are put back. ``saver`` then writes its path only when a validation scores at least the baseline
    (other new bests go to ``saver.candidate_path``). When the trainer completes, the log says whether the
    incumbent was replaced and by what score.

    Nothing is measured on a resumed run (the baseline is in the saver's state), when no incumbent exists, or when
    its weights do not fit ``network`` (another network: the new model replaces it and the old file is kept as
    ``<stem>.prev-<mtime>``, as without this handler).

    Args:
        saver: the "best" :class:`AtomicCheckpointSaver` of the validator.
        evaluator: evaluator whose key metric is the saver's.
        network: the trained network.
        map_location: where to load the incumbent's tensors. Defaults to ``"cpu"``.

    Raises:
        ValueError: when ``saver`` is not a "best" saver (no ``save_key_metric``).
    """

    def __init__(self, saver: AtomicCheckpointSaver, evaluator: Engine, network: torch.nn.Module,
                 map_location: str | torch.device | None = "cpu") -> None:
        if saver.key_metric_name is None:
            raise ValueError("KeepBetterModel needs a 'best' saver (one with save_key_metric)")
        self.saver = saver
        self.evaluator = evaluator
        self.network = network
        self.map_location = map_location

    def attach(self, engine: Engine) -> None:
        """Run :meth:`measure` when ``engine`` starts and :meth:`report` when it completes.

        Args:
            engine: the trainer.
        """
        engine.add_event_handler(Events.STARTED, self.measure)
        engine.add_event_handler(Events.COMPLETED, self.report)

    def measure(self, engine: Engine | None = None) -> float:
        """Score the incumbent and set it as the saver's baseline.

        Args:
            engine: the trainer; nothing is measured once it is past epoch 0 (a resumed run). None: measure now.

        Returns:
            The saver's baseline (-inf when there is none).
        """
        path = self.saver.path
        if self.saver.resumed or (engine is not None and engine.state.epoch > 0) or not os.path.isfile(path):
            return self.saver.baseline
        incumbent = read_checkpoint(path, self.map_location, what="model already at the save path")
        target = getattr(self.network, "module", self.network)
        own = {k: v.detach().clone() for k, v in target.state_dict().items()}
        try:
            target.load_state_dict(incumbent["model"] if isinstance(incumbent, Mapping) and "model" in incumbent
                                   else incumbent)
        except (RuntimeError, TypeError, AttributeError) as err:
            target.load_state_dict(own)
            logger.warning("the model already at %s does not fit this network (%s): it cannot be compared and "
                           "will be kept as a .prev file when this run saves", path, str(err).splitlines()[0][:200])
            return self.saver.baseline
        try:
            self.evaluator.run()
        finally:
            target.load_state_dict(own)
        name = self.saver.key_metric_name
        value = float(self.evaluator.state.metrics[name])
        if not math.isnan(value):
            self.saver.baseline = value
        logger.info("model already at %s: %s %.4f on the validation images %s; only a model scoring at least that "
                    "replaces it", path, name, value, self._image_names())
        return self.saver.baseline

    def _image_names(self) -> str:
        """The validation images' file names (the first 10), for the log."""
        items = getattr(getattr(self.evaluator.data_loader, "dataset", None), "data", None) or []
        names = [os.path.basename(str(it["image"])) for it in items if isinstance(it, Mapping) and "image" in it]
        return "[" + ", ".join(names[:10]) + (f", ... {len(names)} in all" if len(names) > 10 else "") + "]"

    def report(self, engine: Engine) -> None:
        """Log whether the incumbent was replaced (and remove this run's candidate file when it was).

        Args:
            engine: the trainer (unused; the event handler's argument).
        """
        if self.saver.baseline == float("-inf"):
            return
        name, best = self.saver.key_metric_name, self.saver.best_metric
        if self.saver.replaced:
            logger.info("%s replaced: best %s %.4f >= %.4f of the model it replaced", self.saver.path, name, best,
                        self.saver.baseline)
            if self.saver.wrote_candidate and os.path.isfile(self.saver.candidate_path):
                os.remove(self.saver.candidate_path)  # this run's earlier, worse weights
                sidecar_path(self.saver.candidate_path).unlink(missing_ok=True)
        else:
            logger.warning("%s NOT replaced: this run's best %s %.4f is below its %.4f on the same validation "
                           "images; the new weights are kept as %s", self.saver.path, name, best,
                           self.saver.baseline, self.saver.candidate_path)
