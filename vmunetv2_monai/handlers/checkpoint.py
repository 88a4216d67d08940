"""Checkpoint handlers for ignite engines: MONAI's ``CheckpointSaver`` and ``CheckpointLoader`` with this package's
rules (atomic writes that never overwrite an earlier run's model, never save NaN weights and record each
checkpoint's lineage; loading with named errors)."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointLoader as MonaiCheckpointLoader
from monai.handlers import CheckpointSaver
from monai.utils import is_scalar
from torch.optim.lr_scheduler import LRScheduler

from ..checkpoints import find_non_finite, read_checkpoint
from ..files import atomic_write
from .lineage import STATE_ATTR, sidecar_path, write_lineage

__all__ = ["AtomicCheckpointSaver", "AtomicFileSaver", "CheckpointLoader", "keep_previous", "loads_network"]

logger = logging.getLogger(__name__)

#: Scheduler state entries that record progress; every other entry (T_max, eta_min, ...) is a setting.
_SCHEDULE_PROGRESS = frozenset(
    {"last_epoch", "_step_count", "_last_lr", "base_lrs", "_get_lr_called_within_step", "_is_initial", "verbose"}
)


def keep_previous(path: str | os.PathLike) -> Path | None:
    """Rename an existing ``path`` to a free ``<stem>.prev-<its mtime>[-k]<suffix>`` beside it, with its lineage
    sidecar (``<path>.json``).

    Args:
        path: the file a new run is about to write.

    Returns:
        the new path, or None when there was nothing to keep.
    """
    path = Path(path)
    if not path.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(path.stat().st_mtime))
    target, k = path.with_name(f"{path.stem}.prev-{stamp}{path.suffix}"), 0
    while target.exists():
        k += 1
        target = path.with_name(f"{path.stem}.prev-{stamp}-{k}{path.suffix}")
    os.rename(path, target)
    if sidecar_path(path).exists():
        os.rename(sidecar_path(path), sidecar_path(target))
    resumable = path.with_name("latest.pt").exists()  # advise a resume only when there is a run to resume
    logger.warning("%s is from an earlier run: kept as %s (a new run never overwrites it%s)", path, target,
                   "; --resume True continues that run instead" if resumable else "")
    return target


class AtomicFileSaver(BaseSaveHandler):
    """An ignite save handler that writes every checkpoint to one file, ``path``, whatever file name ignite's
    ``Checkpoint`` composes (as MONAI's fixed-filename saver does).

    - The write is atomic (:func:`~vmunetv2_monai.files.atomic_write`): a crash leaves the old file or none.
    - A checkpoint with a NaN or Inf tensor is never written: the call raises, which stops training.
    - The first write of a run that is not a resume keeps an existing file as ``<stem>.prev-<mtime><suffix>``
      (:func:`keep_previous`).
    - Each write gets a lineage sidecar ``<path>.json`` (:func:`~vmunetv2_monai.handlers.lineage.write_lineage`)
      with the epoch and the ``engine.state.lineage`` of :attr:`engine`.
    - :meth:`remove` removes nothing: the next write replaces the file, so it never goes missing.

    Args:
        path: the file to write.

    Attributes:
        engine: the engine whose state gives the epoch and lineage (set by the saver's ``attach``; None: unknown).
        resumed: the file at ``path`` is this run's own (a resume): it is overwritten, not kept.
        written: whether this run has written ``path``.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.engine: Engine | None = None
        self.resumed = False
        self.written = False

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        """Write ``checkpoint`` to :attr:`path`.

        Args:
            checkpoint: the state dict(s) ignite collected.
            filename: ignite's file name (unused: the file is :attr:`path`).
            metadata: ignite's metadata (unused).

        Raises:
            FloatingPointError: naming the file and tensors when ``checkpoint`` holds NaN or Inf (nothing written).
        """
        state = None if self.engine is None else self.engine.state
        epoch = getattr(state, "epoch", None)
        bad = find_non_finite(checkpoint)
        if bad:
            raise FloatingPointError(
                f"not saving {self.path} at epoch {epoch}: {len(bad)} tensor(s) hold NaN or Inf "
                f"({', '.join(bad[:5])}); training diverged, lower 'learning_rate'"
            )
        if not (self.written or self.resumed):
            keep_previous(self.path)
        atomic_write(self.path, lambda tmp: torch.save(checkpoint, tmp))
        write_lineage(self.path, getattr(state, STATE_ATTR, None), epoch)
        self.written = True
        logger.info("saved %s (epoch %s)", self.path, epoch)

    def remove(self, filename: str) -> None:
        """Remove nothing: the next write replaces :attr:`path` atomically.

        Args:
            filename: ignite's file name of the checkpoint it drops (unused).
        """


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` writing one file, ``save_dir/filename``, through :class:`AtomicFileSaver`
    (atomic, never NaN or Inf weights, an earlier run's file kept as ``.prev``, a lineage sidecar).

    A key-metric saver (``save_key_metric``, attach to an evaluator) writes the model whenever ``key_metric_name``
    improves ("best"); an interval saver (``save_interval``, ``save_final``; attach to a trainer) overwrites its file
    ("latest", for resume). A one-entry ``save_dict`` is saved as the raw state dict (ignite's rule), so
    ``models/model.pt`` loads straight into the network; everything loads with ``torch.load(weights_only=True)``.

    Rules added to MONAI's saver (the hooks overridden for them say so):

    - A best below :attr:`baseline` (the score of the model already at the path, set by
      :class:`~vmunetv2_monai.handlers.incumbent.KeepBetterModel`) does not replace that model: it is written to
      :attr:`candidate_path`, and the log says why.
    - A NaN key metric is never a best; a missing or non-scalar one is an error (:meth:`metrics_completed`).
    - Nothing is saved on an exception: the weights may be NaN or mid-epoch (:meth:`attach`).
    - The saver's state is ``{"best_metric", "baseline"}``, as in the "latest" checkpoints of earlier versions
      (:meth:`state_dict`); loading it marks the run a resume, as does a trainer starting past epoch 0. A resume
      overwrites its own files instead of keeping them as ``.prev``.

    Args:
        save_dir: output folder.
        save_dict: name -> object with ``state_dict()`` (DataParallel/DDP wrappers are unwrapped).
        filename: the file inside ``save_dir``.
        name: MONAI's logger name (default: the engine's logger).
        save_final: also save when the engine completes (a run stopped mid-epoch, e.g. by its budget, then resumes
            from where it stopped).
        save_key_metric: save when ``key_metric_name`` improves (a "best" saver); then nothing else is saved.
        key_metric_name: metric in ``engine.state.metrics`` to maximise (required with ``save_key_metric``).
        save_interval: save every N epochs (0: never).

    Raises:
        ValueError: when ``save_dict`` is empty, or ``save_key_metric`` lacks ``key_metric_name`` or comes with
            ``save_final`` or ``save_interval``.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        filename: str = "model.pt",
        name: str | None = None,
        save_final: bool = False,
        save_key_metric: bool = False,
        key_metric_name: str | None = None,
        save_interval: int = 0,
    ) -> None:
        if not save_dict:
            raise ValueError("save_dict must name at least one object to save")
        if save_key_metric and (key_metric_name is None or save_final or save_interval):
            raise ValueError("a save_key_metric saver needs key_metric_name and writes only the best model "
                             "(no save_final, no save_interval)")
        super().__init__(save_dir=os.fspath(save_dir), save_dict=dict(save_dict), name=name, save_final=save_final,
                         final_filename=filename, save_key_metric=save_key_metric, key_metric_name=key_metric_name,
                         key_metric_filename=filename, save_interval=save_interval, n_saved=1)
        self.filename = filename
        self.key_metric_name = key_metric_name if save_key_metric else None
        self.baseline = float("-inf")
        self._file = AtomicFileSaver(self.path)
        self._candidate = AtomicFileSaver(self.candidate_path)
        for checkpoint in (self._final_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler = self._file
        if self._key_metric_checkpoint is not None:
            self._key_metric_checkpoint.save_handler = self._save_best

    @property
    def path(self) -> str:
        """``save_dir/filename``."""
        return os.path.join(self.save_dir, self.filename)

    @property
    def candidate_path(self) -> str:
        """``save_dir/<stem>.candidate<suffix>``: where a best below the baseline goes."""
        stem, suffix = os.path.splitext(self.filename)
        return os.path.join(self.save_dir, f"{stem}.candidate{suffix}")

    @property
    def best_metric(self) -> float:
        """The best key metric so far (-inf before the first; also across a resume)."""
        saved = [] if self._key_metric_checkpoint is None else self._key_metric_checkpoint.state_dict()["_saved"]
        return max((float(priority) for priority, _ in saved), default=float("-inf"))

    @property
    def resumed(self) -> bool:
        """Whether this run continues an earlier one (its files are its own: they are overwritten, not kept)."""
        return self._file.resumed

    @resumed.setter
    def resumed(self, value: bool) -> None:
        self._file.resumed = self._candidate.resumed = value

    @property
    def wrote_candidate(self) -> bool:
        """Whether this run wrote :attr:`candidate_path`."""
        return self._candidate.written

    @property
    def replaced(self) -> bool:
        """Whether ``path`` holds this run's best (it reached the baseline; also across a resume)."""
        return self.best_metric > float("-inf") and self.best_metric >= self.baseline

    def state_dict(self) -> dict:
        """The saver's state for a "latest" checkpoint.

        Returns:
            ``{"best_metric": ..., "baseline": ...}``.
        """
        return {"best_metric": self.best_metric, "baseline": self.baseline}

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Restore the state of :meth:`state_dict` and mark the run a resume (overrides MONAI's, which reads
        ignite's ``Checkpoint`` state: "latest" checkpoints hold this format).

        Args:
            state_dict: a :meth:`state_dict` (``baseline`` may be absent in checkpoints of earlier versions).
        """
        if self._key_metric_checkpoint is not None:
            self._key_metric_checkpoint.load_state_dict({"_saved": [(float(state_dict["best_metric"]), self.path)]})
        self.baseline = float(state_dict.get("baseline", float("-inf")))
        self.resumed = True

    def attach(self, engine: Engine) -> None:
        """MONAI's ``attach`` (epoch level) without its ``EXCEPTION_RAISED`` handler: nothing is saved on an exception
        (MONAI's ``save_final`` also saves then, and its handler keeps later ``EXCEPTION_RAISED`` handlers from
        running). An interval saver also marks the run a resume when ``engine`` starts past epoch 0 (it is attached
        after the resume ``CheckpointLoader``).

        Args:
            engine: a trainer (interval saver) or evaluator (key-metric saver); its state gives the saved files'
                epoch and lineage.
        """
        if self._name is None:
            self.logger = engine.logger
        if self._final_checkpoint is not None:
            engine.add_event_handler(Events.COMPLETED, self.completed)
        if self._key_metric_checkpoint is not None:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.metrics_completed)
        if self._interval_checkpoint is not None:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.interval_completed)
        if self.key_metric_name is None:  # an evaluator's epoch is the trainer's: no sign of a resume
            engine.add_event_handler(Events.STARTED, self._note_resume)
        self._file.engine = self._candidate.engine = engine

    def _note_resume(self, engine: Engine) -> None:
        self.resumed = self.resumed or engine.state.epoch > 0

    def metrics_completed(self, engine: Engine) -> None:
        """MONAI's, except that a NaN key metric is never a best (ignite would save the model when nothing is saved
        yet, then no model after it) and a missing or non-scalar one is an error (MONAI only warns).

        Args:
            engine: the evaluator whose epoch completed.

        Raises:
            KeyError: when the key metric is not a scalar in ``engine.state.metrics``.
        """
        value = engine.state.metrics.get(self.key_metric_name)
        if value is None or not is_scalar(value):
            raise KeyError(f"key metric {self.key_metric_name!r} not in the engine's scalar metrics")
        if not math.isnan(float(value)):
            super().metrics_completed(engine)

    def _save_best(self, checkpoint: Mapping, filename: str, metadata: Mapping) -> None:
        # the key-metric Checkpoint's save handler: a best below the baseline goes to the candidate file
        value = float(metadata["priority"])
        if value >= self.baseline:
            self._file(checkpoint, filename, metadata)
            logger.info("new best %s = %.4f", self.key_metric_name, value)
            return
        self._candidate(checkpoint, filename, metadata)
        logger.info("new best %s = %.4f, below the %.4f of the model already at %s: that model stays, this one is "
                    "kept as %s", self.key_metric_name, value, self.baseline, self.path, self.candidate_path)


class CheckpointLoader(MonaiCheckpointLoader):
    """MONAI's ``CheckpointLoader`` with this package's rules.

    - The file is read by :func:`~vmunetv2_monai.checkpoints.read_checkpoint` (``weights_only``, with errors that
      name the file and the reason), and a checkpoint that does not fit ``load_dict`` is an error naming the file.
    - ``load_path`` None loads nothing (an optional starting point, e.g. fine-tuning from ``init_weights``).
    - An entry the checkpoint lacks is an error, unless its object has ``optional_state = True`` (then it is skipped
      with a warning, e.g. :class:`~vmunetv2_monai.handlers.RunSettings` of an earlier version).
    - Learning-rate schedulers keep the settings of the current config (``T_max``, ``eta_min``, ...) and take only
      their progress (epoch, current rates) from the checkpoint, so resuming with more epochs continues the config's
      schedule instead of running past the old one (where a cosine climbs back up). The engine keeps its
      ``max_epochs``, as with MONAI's loader.

    Args:
        load_path: checkpoint file; None: the loader loads nothing.
        load_dict: name -> object with ``load_state_dict``; a raw state dict fills a one-entry ``load_dict``.
        name: MONAI's logger name (default: the engine's logger).
        map_location: ``torch.load``'s ``map_location``.
        strict: strict state-dict loading.
    """

    def __init__(
        self,
        load_path: str | os.PathLike | None,
        load_dict: Mapping[str, Any],
        name: str | None = None,
        map_location: str | torch.device | None = None,
        strict: bool = True,
    ) -> None:
        if not load_dict:
            raise ValueError("load_dict must name at least one object to load")
        # MONAI's loader needs a path; None (nothing to load) is kept as None after its checks
        super().__init__(load_path=os.fspath(load_path or ""), load_dict=dict(load_dict), name=name,
                         map_location=map_location, strict=strict)
        self.load_path = None if load_path is None else Path(load_path)

    def attach(self, engine: Engine) -> None:
        """Load when ``engine`` starts (nothing is attached without a ``load_path``).

        Args:
            engine: a trainer or evaluator.
        """
        if self.load_path is not None:
            super().attach(engine)

    def __call__(self, engine: Engine) -> None:
        """Load the checkpoint into ``load_dict``'s objects.

        Args:
            engine: the engine that started.

        Raises:
            ValueError: naming the file when it lacks an entry, does not fit ``load_dict``, or has more epochs done
                than the engine's ``max_epochs``.
        """
        if self.load_path is None:
            return
        checkpoint = read_checkpoint(self.load_path, self.map_location)
        first = next(iter(self.load_dict))
        if len(self.load_dict) == 1 and not (isinstance(checkpoint, Mapping) and first in checkpoint):
            checkpoint = {first: checkpoint}
        absent = [k for k in self.load_dict if not isinstance(checkpoint, Mapping) or k not in checkpoint]
        missing = [k for k in absent if not getattr(self.load_dict[k], "optional_state", False)]
        if missing:
            raise ValueError(f"checkpoint {self.load_path} has no entry for {', '.join(missing)}")
        if absent:
            logger.warning("checkpoint %s has no entry for %s (saved by an earlier version): not loaded, not checked",
                           self.load_path, ", ".join(absent))
        load_dict = {k: v for k, v in self.load_dict.items() if k not in absent}
        settings = {
            name: {k: v for k, v in obj.state_dict().items() if k not in _SCHEDULE_PROGRESS}
            for name, obj in self.load_dict.items()
            if isinstance(obj, LRScheduler)
        }
        prior_max_epochs = engine.state.max_epochs
        try:
            Checkpoint.load_objects(to_load=load_dict, checkpoint=checkpoint, strict=self.strict)
        except (KeyError, RuntimeError, TypeError, ValueError) as err:
            raise ValueError(f"checkpoint {self.load_path} does not fit this config (another network size, "
                             f"depths or dims?): {str(err)[:1000]}") from err
        if prior_max_epochs is not None and engine.state.epoch > prior_max_epochs:
            raise ValueError(f"checkpoint {self.load_path} has {engine.state.epoch} epochs done, more than "
                             f"'epochs' ({prior_max_epochs}): give a larger 'epochs' to train further")
        engine.state.max_epochs = prior_max_epochs
        for name, kept in settings.items():
            scheduler = self.load_dict[name]
            changed = {k: v for k, v in kept.items() if scheduler.__dict__.get(k) != v}
            scheduler.__dict__.update(kept)
            if changed:
                logger.info("%s: kept this config's %s over the checkpoint's", name, changed)
        logger.info("restored %s from %s", ", ".join(self.load_dict), self.load_path)


def loads_network(handlers: Sequence[Any], key: str = "model") -> bool:
    """Whether one of ``handlers`` loads weights into the network when training starts: a checkpoint loader (MONAI's
    or ours) whose ``load_dict`` has ``key``, as MONAI Label's stock bundle app inserts for its /train.

    Args:
        handlers: a config's handler objects (``train#handlers``).
        key: the ``load_dict`` entry of the network.

    Returns:
        True when such a loader is among ``handlers``.
    """
    return any(isinstance(getattr(h, "load_dict", None), Mapping) and key in h.load_dict for h in handlers)
