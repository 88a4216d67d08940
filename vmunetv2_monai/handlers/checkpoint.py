"""Checkpoint handlers for ignite engines: atomic saving that never overwrites an earlier run's model, never
saves NaN weights and records each checkpoint's lineage, loading with named errors, and a stop on a non-finite
training loss."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from monai.handlers import CheckpointLoader as MonaiCheckpointLoader
from monai.utils import is_scalar
from torch.optim.lr_scheduler import LRScheduler

from ..checkpoints import find_non_finite, read_checkpoint
from ..files import atomic_write
from .lineage import STATE_ATTR, sidecar_path, write_lineage

__all__ = ["AtomicCheckpointSaver", "CheckpointLoader", "StopOnNonFiniteLoss", "keep_previous", "loads_network"]

logger = logging.getLogger(__name__)

#: Scheduler state entries that record progress; every other entry (T_max, eta_min, ...) is a setting.
_SCHEDULE_PROGRESS = frozenset(
    {"last_epoch", "_step_count", "_last_lr", "base_lrs", "_get_lr_called_within_step", "_is_initial", "verbose"}
)


def _unwrap(obj: Any) -> Any:
    if isinstance(obj, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        return obj.module
    return obj


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


class AtomicCheckpointSaver:
    """Save ``save_dict`` state dicts to ``save_dir/filename`` atomically.

    With ``key_metric_name`` set (attach to an evaluator) it saves when that metric improves ("best"); without it
    (attach to a trainer) it saves every ``interval`` epochs, overwriting one file ("latest", for resume).
    A one-entry ``save_dict`` is saved as the raw state dict, so ``models/model.pt`` loads straight into the
    network. Everything saved loads with ``torch.load(weights_only=True)``. The saver has a state dict (its best
    score) so that a "latest" checkpoint can carry it across a resume.

    Each saved file gets a lineage sidecar ``<file>.json`` (see :mod:`~vmunetv2_monai.handlers.lineage`): its
    sha256, the epoch and the ``engine.state.lineage`` that a tracker of the engine set (the MLflow run and config
    hash, see :class:`~vmunetv2_monai.handlers.MLflowTracker`; ``null`` when the run is not tracked).

    A "best" saver can be given a ``baseline``: the score of the model already at its path (the incumbent, see
    :class:`~vmunetv2_monai.handlers.incumbent.KeepBetterModel`). A new best below the baseline does not replace
    the incumbent: it is written beside it as ``<stem>.candidate<suffix>``, and the log says why.

    Nothing from an earlier run is lost: when the file already exists at the first save of a run that is not a
    resume, it is renamed to ``<stem>.prev-<mtime><suffix>`` first (see :func:`keep_previous`). A run is a resume
    when this saver's state was loaded or its engine starts at an epoch above 0. A payload with NaN or Inf is
    never saved: the save raises, which stops training.

    Args:
        save_dir: output folder.
        save_dict: name -> object with ``state_dict()`` (DataParallel/DDP wrappers are unwrapped).
        filename: file name inside ``save_dir``.
        key_metric_name: metric in ``engine.state.metrics`` to maximise; None saves every ``interval`` epochs.
        interval: epochs between interval saves.
        save_final: interval saver only: also save when the engine completes (a run stopped mid-epoch, e.g. by
            its budget, then resumes from where it stopped).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        filename: str = "model.pt",
        key_metric_name: str | None = None,
        interval: int = 1,
        save_final: bool = False,
    ) -> None:
        if not save_dict:
            raise ValueError("save_dict must name at least one object to save")
        self.save_dir = os.fspath(save_dir)
        self.save_dict = dict(save_dict)
        self.filename = filename
        self.key_metric_name = key_metric_name
        self.interval = interval
        self.save_final = save_final
        self.best_metric = float("-inf")
        self.baseline = float("-inf")
        self.resumed = False
        self.wrote_candidate = False
        self._saved = False

    def state_dict(self) -> dict:
        """The saver's state for a "latest" checkpoint.

        Returns:
            ``{"best_metric": ..., "baseline": ...}``.
        """
        return {"best_metric": self.best_metric, "baseline": self.baseline}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore the state of :meth:`state_dict` (a resume: the file at :attr:`path` is this run's own).

        Args:
            state: a :meth:`state_dict` (``baseline`` may be absent in checkpoints of earlier versions).
        """
        self.best_metric = float(state["best_metric"])
        self.baseline = float(state.get("baseline", float("-inf")))
        self.resumed = True

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
    def replaced(self) -> bool:
        """Whether ``path`` holds this run's best (it reached the baseline; also across a resume)."""
        return self.best_metric > float("-inf") and self.best_metric >= self.baseline

    def attach(self, engine: Engine) -> None:
        """Save on ``engine``'s epochs (interval saver) or when its key metric improves ("best" saver).

        Args:
            engine: a trainer (interval saver) or evaluator ("best" saver).
        """
        if self.key_metric_name is None:
            engine.add_event_handler(Events.STARTED, self._note_resume)
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self._save)
            if self.save_final:
                engine.add_event_handler(Events.COMPLETED, self._save)
        else:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._save_if_better)

    def _note_resume(self, engine: Engine) -> None:
        # a trainer's saver is attached after the resume CheckpointLoader, so a resumed trainer has its epoch here
        # (an evaluator's epoch is the trainer's, so "best" savers learn of a resume from load_state_dict only)
        self.resumed = self.resumed or engine.state.epoch > 0

    def _payload(self) -> Any:
        states = {k: _unwrap(v).state_dict() for k, v in self.save_dict.items()}
        return next(iter(states.values())) if len(states) == 1 else states

    def _save(self, engine: Engine, path: str | None = None) -> None:
        path = path or self.path
        payload = self._payload()
        bad = find_non_finite(payload)
        if bad:
            raise FloatingPointError(
                f"not saving {path} at epoch {engine.state.epoch}: {len(bad)} tensor(s) hold NaN or Inf "
                f"({', '.join(bad[:5])}); training diverged, lower 'learning_rate'"
            )
        first = not (self._saved if path == self.path else self.wrote_candidate)
        if first and not self.resumed:
            keep_previous(path)
        atomic_write(path, lambda tmp: torch.save(payload, tmp))
        write_lineage(path, getattr(engine.state, STATE_ATTR, None), engine.state.epoch)
        if path == self.path:
            self._saved = True
        else:
            self.wrote_candidate = True
        logger.info("saved %s (epoch %d)", path, engine.state.epoch)

    def _save_if_better(self, engine: Engine) -> None:
        value = engine.state.metrics.get(self.key_metric_name)
        if value is None or not is_scalar(value):
            raise KeyError(f"key metric {self.key_metric_name!r} not in the engine's scalar metrics")
        value = float(value)
        if value != value or value <= self.best_metric:  # NaN or not better
            return
        self.best_metric = value
        if value >= self.baseline:
            self._save(engine)
            logger.info("new best %s = %.4f", self.key_metric_name, value)
            return
        self._save(engine, self.candidate_path)
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


class StopOnNonFiniteLoss:
    """Stop training with an error as soon as the training loss is NaN or Inf (ignite's ``TerminateOnNan``
    ends the run with exit status 0)."""

    def attach(self, engine: Engine) -> None:
        """Check the loss after every iteration of ``engine``.

        Args:
            engine: a trainer.
        """
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        items = output if isinstance(output, list) else [output]
        for item in items:
            loss = item.get("loss") if isinstance(item, Mapping) else None
            if loss is not None and not bool(torch.isfinite(torch.as_tensor(loss)).all()):
                raise FloatingPointError(
                    f"training loss is {float(torch.as_tensor(loss).float().mean())} at epoch {engine.state.epoch}, "
                    f"iteration {engine.state.iteration}: training diverged; lower 'learning_rate'"
                )
