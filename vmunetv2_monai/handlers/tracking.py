"""Complete MLflow runs for the bundle: status, parameters, artifacts, readable names and checkpoint lineage.

MONAI's :class:`~monai.handlers.MLFlowHandler` logs metrics but leaves an evaluation run RUNNING, logs only
``max_epochs`` and ``epoch_length`` as parameters, and reuses any unfinished run of the experiment.
:class:`MLflowTracker` keeps its metric logging and adds: one new run per workflow with a distinct name
(``<job>-<workflow>-<time>``; the validator of a training job logs into the trainer's run), parameters given by the
config, artifacts logged when the run ends, status FINISHED on completion, FAILED when the engine raises and KILLED
on SIGTERM or Ctrl-C, the run and config hash in the lineage sidecar of every checkpoint the run writes, and for a
run that reads a checkpoint (evaluate, inference) a link to the run that produced it. It is wired in by
``configs/mlflow_tracking.json`` (``--tracking configs/mlflow_tracking.json``).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from ignite.engine import Engine, Events
from monai.handlers import MLFlowHandler

from .lineage import STATE_ATTR, config_hash, read_lineage

__all__ = [
    "CHECKPOINT_TAG",
    "CONFIG_HASH_TAG",
    "ERROR_TAG",
    "JOB_TAG",
    "MLFLOW_PARENT_RUN_ID",
    "TRAIN_CONFIG_TAG",
    "TRAIN_RUN_TAG",
    "TRAIN_STORE_TAG",
    "UNKNOWN",
    "WORKFLOW_TAG",
    "MLflowTracker",
    "Terminated",
    "executed_config",
    "package_versions",
]

logger = logging.getLogger(__name__)

MLFLOW_PARENT_RUN_ID = "mlflow.parentRunId"  # mlflow.utils.mlflow_tags.MLFLOW_PARENT_RUN_ID, without importing mlflow

#: Run tag: the job (the bundle's absolute ``output_dir``) shared by a job's runs.
JOB_TAG = "vmunetv2.job"
#: Run tag: the workflow (``train``, ``evaluate``, ``inference``).
WORKFLOW_TAG = "vmunetv2.workflow"
#: Run tag: the hash of the executed config (:func:`~vmunetv2_monai.handlers.lineage.config_hash`).
CONFIG_HASH_TAG = "vmunetv2.config_hash"
#: Run tag: the checkpoint an evaluation or inference run reads.
CHECKPOINT_TAG = "vmunetv2.checkpoint"
#: Run tag: the MLflow run that produced that checkpoint, from its lineage sidecar.
TRAIN_RUN_TAG = "vmunetv2.train_run_id"
#: Run tag: the tracking store of that training run.
TRAIN_STORE_TAG = "vmunetv2.train_tracking_uri"
#: Run tag: the config hash of that training run.
TRAIN_CONFIG_TAG = "vmunetv2.train_config_hash"
#: Run tag: the error a FAILED or KILLED run ended with.
ERROR_TAG = "vmunetv2.error"
#: Value of :data:`TRAIN_RUN_TAG` for a checkpoint without trusted lineage (see :func:`read_lineage`).
UNKNOWN = "unknown"

_PACKAGES = ("vmunetv2-monai", "monai", "torch", "numpy", "pytorch-ignite", "mlflow", "mamba-ssm")
#: MLflow error codes of ``get_run`` for a run id that is not in the store.
_NOT_IN_STORE = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
#: Runs started this long ago (ms) or less are checked for a clash of names.
_NAME_WINDOW_MS = 120_000


def _timestamp() -> str:
    """The local time in run names."""
    return time.strftime("%Y%m%d-%H%M%S")


def package_versions(packages: Sequence[str] = _PACKAGES) -> dict[str, str]:
    """The installed versions of ``packages``, as run parameters.

    Args:
        packages: distribution names. Defaults to this package, MONAI, torch, numpy, ignite, MLflow and mamba-ssm.

    Returns:
        ``{"version_<package>": version}`` (``"not installed"`` for a package that is not).
    """
    versions = {}
    for name in packages:
        try:
            versions[f"version_{name}"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[f"version_{name}"] = "not installed"
    return versions


class Terminated(SystemExit):
    """Raised in the main thread on SIGTERM while an :class:`MLflowTracker` owns a run: the engine stops through
    its exception handlers, the run ends KILLED and the process exits with status 143 (128 + SIGTERM)."""


class MLflowTracker(MLFlowHandler):
    """An :class:`~monai.handlers.MLFlowHandler` whose run is complete when the workflow ends.

    Args:
        workflow: name of the workflow (``"train"``, ``"evaluate"``, ``"inference"``), written to the
            ``vmunetv2.workflow`` tag and part of the run name.
        job: identifier shared by the runs of one job (the bundle uses the absolute ``output_dir``), written to the
            ``vmunetv2.job`` tag; its last path part starts the run name ``<job>-<workflow>-<YYYYmmdd-HHMMSS>``
            (``-2``, ``-3``, ... appended when a recent run of the experiment has that name).
        parent: the handler whose run this one logs into when that run is active (a training job's validator
            uses the trainer's run); otherwise, or with ``None``, this handler starts and owns a new run.
        params: run parameters, logged when the run starts (values are converted with ``str``).
        dataset_param: parameter name for the number of items in the engine's dataset (``"n_training"``), logged
            into the run (owned or shared) when the engine first starts.
        artifacts: files or folders logged when the owned run completes (missing paths are reported, not logged).
        checkpoint: the checkpoint the workflow reads (evaluate, inference). The run is linked to the run that
            produced it, from the checkpoint's lineage sidecar: ``vmunetv2.train_run_id`` (``"unknown"`` for a
            checkpoint without trusted lineage), ``vmunetv2.train_tracking_uri`` (its store) and, when that run is
            in this run's experiment and store, MLflow's own parent link ``mlflow.parentRunId``.
        config_file: the executed config (``config_<time>.json``); its hash is the ``vmunetv2.config_hash`` tag.
        kwargs: :class:`~monai.handlers.MLFlowHandler` arguments (``tracking_uri``, ``experiment_name``,
            ``run_name`` (replaces the job's name at the start of the run name), ``iteration_log``,
            ``output_transform``, ...); ``close_on_complete`` is implied by owning the run.

    While the run is active, ``engine.state.lineage`` holds the run id, name, experiment, store and config hash;
    :class:`~vmunetv2_monai.handlers.AtomicCheckpointSaver` writes it beside every checkpoint.
    """

    def __init__(
        self,
        workflow: str,
        job: str,
        parent: MLflowTracker | None = None,
        params: Mapping[str, Any] | None = None,
        dataset_param: str | None = None,
        artifacts: Sequence[str] | None = None,
        checkpoint: str | os.PathLike | None = None,
        config_file: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(experiment_param=dict(params or {}), artifacts=list(artifacts or []), **kwargs)
        self.workflow = workflow
        self.job = job
        self.parent = parent
        self.dataset_param = dataset_param
        self.checkpoint = None if checkpoint is None else os.path.abspath(checkpoint)
        self.config_hash = config_hash(config_file)
        self.owns_run = False
        self._dataset_logged = False
        self._previous_sigterm: Any = None

    def attach(self, engine: Engine) -> None:
        """Metric logging of MLFlowHandler; the run starts with ``engine`` and ends with it (FINISHED, FAILED or
        KILLED).

        Args:
            engine: the workflow's engine (trainer, evaluator or inference engine).
        """
        for event, handler in ((Events.STARTED, self.start), (Events.EXCEPTION_RAISED, self.fail)):
            if not engine.has_event_handler(handler, event):
                engine.add_event_handler(event, handler)
        if self.iteration_log and not engine.has_event_handler(self.iteration_completed, Events.ITERATION_COMPLETED):
            event = Events.ITERATION_COMPLETED
            engine.add_event_handler(event(event_filter=self.iteration_log) if callable(self.iteration_log) else event,
                                     self.iteration_completed)
        if self.epoch_log and not engine.has_event_handler(self.epoch_completed, Events.EPOCH_COMPLETED):
            event = Events.EPOCH_COMPLETED
            engine.add_event_handler(event(event_filter=self.epoch_log) if callable(self.epoch_log) else event,
                                     self.epoch_completed)

    def start(self, engine: Engine) -> None:
        """Use the parent's active run or create this workflow's own run; log the parameters once; put the run's
        lineage in ``engine.state``. The run ends after the engine's other COMPLETED handlers (this one adds its
        own when the engine starts, after the config's ``initialize`` attached the rest).

        Args:
            engine: the engine that started.
        """
        self._set_experiment()
        if self.cur_run is None:
            if self.parent is not None and self.parent.cur_run is not None:
                self.cur_run = self.parent.cur_run
            else:
                self.cur_run = self.client.create_run(
                    self.experiment.experiment_id, run_name=self._new_run_name(), tags=self._tags()
                )
                self.owns_run = True
                self._catch_sigterm()
                logger.info("MLflow run %s (%s) in experiment %s", self.cur_run.info.run_name, self.cur_run.info.run_id,
                            self.experiment_name)
        if self.owns_run:
            state = {attr: getattr(engine.state, attr, None) for attr in self.default_tracking_params}
            self._log_params({**state, **self.experiment_param})
        if self.dataset_param and not self._dataset_logged:
            self._log_params({self.dataset_param: len(engine.data_loader.dataset)})
            self._dataset_logged = True
        setattr(engine.state, STATE_ATTR, self.lineage())
        if not engine.has_event_handler(self.finish, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self.finish)

    def lineage(self) -> dict[str, str | None]:
        """What a checkpoint written now records of this run (see :mod:`~vmunetv2_monai.handlers.lineage`)."""
        info = self.cur_run.info
        return {"mlflow_run_id": info.run_id, "mlflow_run_name": info.run_name,
                "mlflow_experiment_id": info.experiment_id, "mlflow_tracking_uri": self.client.tracking_uri,
                "config_hash": self.config_hash}

    def _new_run_name(self) -> str:
        base = f"{self.run_name or Path(self.job).name or 'job'}-{self.workflow}-{_timestamp()}"
        since = int(time.time() * 1000) - _NAME_WINDOW_MS
        recent = self.client.search_runs([self.experiment.experiment_id], f"attributes.start_time >= {since}",
                                         max_results=1000)
        taken = {run.info.run_name for run in recent}
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}-{k}"
        return name

    def _tags(self) -> dict[str, str]:
        tags = {JOB_TAG: self.job, WORKFLOW_TAG: self.workflow}
        if self.config_hash:
            tags[CONFIG_HASH_TAG] = self.config_hash
        if self.checkpoint is not None:
            tags.update(self._checkpoint_tags(self.checkpoint))
        return tags

    def _checkpoint_tags(self, path: str) -> dict[str, str]:
        """Tags linking this run to the run that produced checkpoint ``path`` (from its lineage sidecar)."""
        tags = {CHECKPOINT_TAG: path, TRAIN_RUN_TAG: UNKNOWN}
        record = read_lineage(path)
        run_id = record.get("mlflow_run_id") if record else None
        if not run_id:
            logger.info("MLflow: %s has no recorded training run: %s is %r", path, TRAIN_RUN_TAG, UNKNOWN)
            return tags
        tags[TRAIN_RUN_TAG] = run_id
        tags[TRAIN_STORE_TAG] = record.get("mlflow_tracking_uri") or UNKNOWN
        tags[TRAIN_CONFIG_TAG] = record.get("config_hash") or UNKNOWN
        if self._in_experiment(run_id):
            tags[MLFLOW_PARENT_RUN_ID] = run_id
        else:
            logger.info("MLflow: %s comes from run %s of another store or experiment (%s)", path, run_id,
                        tags[TRAIN_STORE_TAG])
        return tags

    def _in_experiment(self, run_id: str) -> bool:
        """Whether run ``run_id`` is in this tracker's store and experiment."""
        from mlflow.exceptions import MlflowException  # here: the package imports without mlflow (MONAI Label's env)

        try:
            run = self.client.get_run(run_id)
        except MlflowException as err:
            if err.error_code in _NOT_IN_STORE:
                return False
            raise
        return run.info.experiment_id == self.experiment.experiment_id

    def _catch_sigterm(self) -> None:
        """Make SIGTERM raise :class:`Terminated` in the main thread while the run is owned (only where SIGTERM
        has its default action; a forked data-loader worker keeps the default)."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            logger.info("MLflow: SIGTERM has its own handler; a SIGTERM leaves run %s to it", self.cur_run.info.run_id)
            return
        pid = os.getpid()

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            if os.getpid() != pid:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
                return
            logger.warning("SIGTERM: stopping; MLflow run %s ends KILLED", self.cur_run.info.run_id)
            raise Terminated(128 + signum)

        self._previous_sigterm = signal.signal(signal.SIGTERM, on_sigterm)

    def finish(self, engine: Engine) -> None:
        """Log the artifacts and mark the owned run FINISHED (a shared run is left to its owner).

        Args:
            engine: the engine that completed.
        """
        if not self.owns_run or self.cur_run is None:
            return
        missing = [str(p) for p in self.artifacts if p and not os.path.exists(p)]
        if missing:
            logger.warning("MLflow: artifacts not found, not logged: %s", missing)
        self.complete()
        self._end("FINISHED")

    def fail(self, engine: Engine, e: BaseException) -> None:
        """Mark the owned run KILLED (SIGTERM, Ctrl-C) or FAILED (any other exception) with the error as a tag.

        Args:
            engine: the engine that raised.
            e: the exception.

        Raises:
            BaseException: ``e`` again, always (the engine's exception handlers must not swallow it).
        """
        if self.owns_run and self.cur_run is not None:
            killed = isinstance(e, (Terminated, KeyboardInterrupt))
            reason = "terminated (SIGTERM)" if isinstance(e, Terminated) else f"{type(e).__name__}: {e}"
            self.client.set_tag(self.cur_run.info.run_id, ERROR_TAG, reason[:5000])
            self._end("KILLED" if killed else "FAILED")
        raise e

    def _end(self, status: str) -> None:
        run_id = self.cur_run.info.run_id
        self.client.set_terminated(run_id, status)
        logger.info("MLflow run %s ended: %s", run_id, status)
        self.cur_run = None
        self.owns_run = False
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
        self._dispose_sqlite_store()


def executed_config(output_dir: str | os.PathLike) -> str | None:
    """The newest ``config_<time>.json`` that ``monai.bundle run --tracking`` wrote to ``output_dir`` (the executed,
    merged config). (MONAI's own ``save_execute_config`` id is not a usable path when ``output_dir`` is given as a
    plain path on the command line.)

    Args:
        output_dir: the run's output folder.

    Returns:
        The file's path, or None when there is none.
    """
    found = sorted(Path(output_dir).glob("config_*.json"), key=lambda p: p.stat().st_mtime)
    return str(found[-1]) if found else None
