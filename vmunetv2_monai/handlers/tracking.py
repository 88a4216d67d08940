"""Complete MLflow runs for the bundle: status, parameters, artifacts and the link between train and evaluate runs.

MONAI's :class:`~monai.handlers.MLFlowHandler` logs metrics but leaves an evaluation run RUNNING, logs only
``max_epochs`` and ``epoch_length`` as parameters, and reuses any unfinished run of the experiment.
:class:`MLflowTracker` keeps its metric logging and adds: one new run per workflow (the validator of a training job
logs into the trainer's run), parameters given by the config, artifacts logged when the run ends, status FINISHED
on completion and FAILED when the engine raises, and tags that link the runs of one job. It is wired in by
``configs/mlflow_tracking.json`` (``--tracking configs/mlflow_tracking.json``).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Any

from ignite.engine import Engine, Events
from monai.handlers import MLFlowHandler

__all__ = ["JOB_TAG", "TRAIN_RUN_TAG", "WORKFLOW_TAG", "MLflowTracker", "executed_config", "package_versions"]

logger = logging.getLogger(__name__)

JOB_TAG = "vmunetv2.job"
WORKFLOW_TAG = "vmunetv2.workflow"
TRAIN_RUN_TAG = "vmunetv2.train_run_id"

_PACKAGES = ("vmunetv2-monai", "monai", "torch", "numpy", "pytorch-ignite", "mlflow", "mamba-ssm")


def package_versions(packages: Sequence[str] = _PACKAGES) -> dict[str, str]:
    """``{"version_<package>": version}`` for the installed ``packages`` ("not installed" for the others)."""
    versions = {}
    for name in packages:
        try:
            versions[f"version_{name}"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[f"version_{name}"] = "not installed"
    return versions


class MLflowTracker(MLFlowHandler):
    """An :class:`~monai.handlers.MLFlowHandler` whose run is complete when the workflow ends.

    Args:
        workflow: name of the workflow (``"train"``, ``"evaluate"``), written to the ``vmunetv2.workflow`` tag.
        job: identifier shared by the runs of one job (the bundle uses the absolute ``output_dir``), written to the
            ``vmunetv2.job`` tag. An evaluate run also gets ``vmunetv2.train_run_id``: the newest finished train
            run with the same job tag.
        parent: the handler whose run this one logs into when that run is active (a training job's validator
            uses the trainer's run); otherwise, or with ``None``, this handler starts and owns a new run.
        params: run parameters, logged when the run starts (values are converted with ``str``).
        dataset_param: parameter name for the number of items in the engine's dataset (``"n_training"``), logged
            into the run (owned or shared) when the engine first starts.
        artifacts: files or folders logged when the owned run completes (missing paths are reported, not logged).
        kwargs: :class:`~monai.handlers.MLFlowHandler` arguments (``tracking_uri``, ``experiment_name``,
            ``run_name``, ``iteration_log``, ``output_transform``, ...); ``close_on_complete`` is implied by owning
            the run.
    """

    def __init__(
        self,
        workflow: str,
        job: str,
        parent: MLflowTracker | None = None,
        params: Mapping[str, Any] | None = None,
        dataset_param: str | None = None,
        artifacts: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(experiment_param=dict(params or {}), artifacts=list(artifacts or []), **kwargs)
        self.workflow = workflow
        self.job = job
        self.parent = parent
        self.dataset_param = dataset_param
        self.owns_run = False
        self._dataset_logged = False

    def attach(self, engine: Engine) -> None:
        """Metric logging of MLFlowHandler; the run ends with the engine (FINISHED, or FAILED on an exception)."""
        for event, handler in ((Events.STARTED, self.start), (Events.COMPLETED, self.finish),
                               (Events.EXCEPTION_RAISED, self.fail)):
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
        """Use the parent's active run or create this workflow's own run; log the parameters once."""
        self._set_experiment()
        if self.cur_run is None:
            if self.parent is not None and self.parent.cur_run is not None:
                self.cur_run = self.parent.cur_run
            else:
                self.cur_run = self.client.create_run(
                    self.experiment.experiment_id, run_name=self.run_name, tags=self._tags()
                )
                self.owns_run = True
                logger.info("MLflow run %s (%s) in experiment %s", self.cur_run.info.run_id, self.workflow,
                            self.experiment_name)
        if self.owns_run:
            state = {attr: getattr(engine.state, attr, None) for attr in self.default_tracking_params}
            self._log_params({**state, **self.experiment_param})
        if self.dataset_param and not self._dataset_logged:
            self._log_params({self.dataset_param: len(engine.data_loader.dataset)})
            self._dataset_logged = True

    def _tags(self) -> dict[str, str]:
        tags = {JOB_TAG: self.job, WORKFLOW_TAG: self.workflow}
        if self.workflow != "train":
            query = (f"tags.`{JOB_TAG}` = '{self.job}' and tags.`{WORKFLOW_TAG}` = 'train' "
                     "and attributes.status = 'FINISHED'")
            runs = self.client.search_runs(
                [self.experiment.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1
            )
            if runs:
                tags[TRAIN_RUN_TAG] = runs[0].info.run_id
        return tags

    def finish(self, engine: Engine) -> None:
        """Log the artifacts and mark the owned run FINISHED (a shared run is left to its owner)."""
        if not self.owns_run or self.cur_run is None:
            return
        missing = [str(p) for p in self.artifacts if p and not os.path.exists(p)]
        if missing:
            logger.warning("MLflow: artifacts not found, not logged: %s", missing)
        self.complete()
        self._end("FINISHED")

    def fail(self, engine: Engine, e: BaseException) -> None:
        """Mark the owned run FAILED, then re-raise (the engine's exception handlers must not swallow it)."""
        if self.owns_run and self.cur_run is not None:
            self.client.set_tag(self.cur_run.info.run_id, "vmunetv2.error", f"{type(e).__name__}: {e}"[:5000])
            self._end("FAILED")
        raise e

    def _end(self, status: str) -> None:
        run_id = self.cur_run.info.run_id
        self.client.set_terminated(run_id, status)
        logger.info("MLflow run %s ended: %s", run_id, status)
        self.cur_run = None
        self.owns_run = False
        self._dispose_sqlite_store()



def executed_config(output_dir: str | os.PathLike) -> str | None:
    """The newest ``config_<time>.json`` that ``monai.bundle run --tracking`` wrote to ``output_dir`` (the executed,
    merged config), or ``None``. (MONAI's own ``save_execute_config`` id is not a usable path when ``output_dir`` is
    given as a plain path on the command line.)"""
    found = sorted(Path(output_dir).glob("config_*.json"), key=lambda p: p.stat().st_mtime)
    return str(found[-1]) if found else None
