"""The settings a training run started with, kept in its ``latest.pt`` so that a resume that changes them is never
silent: settings a run cannot change midway are refused by name, the others are applied and logged."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["ResumeSettingsError", "RunSettings", "resume_from"]

logger = logging.getLogger(__name__)


class ResumeSettingsError(Exception):
    """A resume would change settings that a run keeps from start to end (not a ``ValueError``, so that a
    checkpoint loader does not report it as a checkpoint that does not fit)."""


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` as JSON would give them back (tuples as lists), so that a saved run compares equal."""
    return json.loads(json.dumps(dict(values)))


class RunSettings:
    """A run's settings as a state-dict object for the trainer's checkpoint (``train#state``).

    Saved with the run's other state; when a resume loads it, each recorded setting is compared with the current
    config. A changed ``fixed`` setting (batch size, image size, preprocessing, network, weight decay) stops the run
    with a :class:`ResumeSettingsError` naming each one, its old and its new value; a changed ``changeable``
    setting (the budget, the learning-rate schedule) applies from the resumed iteration on and is logged at
    WARNING. Put it first in the load dict, so that it is checked before weights that may not fit are loaded.

    A checkpoint saved before settings were recorded lacks this entry: the loader skips it (``optional_state``)
    with a warning.

    Args:
        fixed: id -> value of the settings a run cannot change midway.
        changeable: id -> value of the settings a resume may change.
        source: the checkpoint, for messages. Defaults to ``"latest.pt"``.

    Raises:
        ValueError: when a setting is both fixed and changeable.
    """

    optional_state = True

    def __init__(self, fixed: Mapping[str, Any], changeable: Mapping[str, Any],
                 source: str | os.PathLike = "latest.pt") -> None:
        overlap = set(fixed) & set(changeable)
        if overlap:
            raise ValueError(f"settings both fixed and changeable: {', '.join(sorted(overlap))}")
        self.fixed = _plain(fixed)
        self.changeable = _plain(changeable)
        self.source = os.fspath(source)

    def state_dict(self) -> dict[str, Any]:
        """The current settings, for the trainer's checkpoint.

        Returns:
            ``{id: value}`` of the fixed and changeable settings, as JSON gives them back.
        """
        return {**self.fixed, **self.changeable}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Compare the settings a resumed run was saved with to the current ones (nothing is loaded).

        Args:
            state: the settings recorded in the checkpoint.

        Raises:
            ResumeSettingsError: naming each changed fixed setting with its old and new value.
        """
        current = self.state_dict()
        changed = {k: (state[k], v) for k, v in current.items() if k in state and state[k] != v}
        refused = [f"'{k}' {old!r} -> {new!r}" for k, (old, new) in changed.items() if k in self.fixed]
        if refused:
            raise ResumeSettingsError(
                f"cannot resume {self.source} with changed settings that a run keeps from start to end: "
                f"{', '.join(refused)}; give the run's values, or start a new run (without 'resume', or into "
                "another 'output_dir')"
            )
        if changed:
            logger.warning("resuming %s with changed settings, applied from here on: %s", self.source,
                           ", ".join(f"'{k}' {old!r} -> {new!r}" for k, (old, new) in changed.items()))


def resume_from(latest_path: str | os.PathLike, resume: bool) -> bool:
    """Whether training resumes from ``latest_path``: ``resume`` is set and the file exists. A ``resume`` without
    the file logs a WARNING that training starts from the beginning (instead of doing so without a word).

    Args:
        latest_path: the run's ``latest.pt``.
        resume: the bundle's ``resume`` setting.

    Returns:
        True when training resumes.
    """
    if resume and not os.path.exists(latest_path):
        logger.warning("'resume' is set but %s does not exist: nothing to resume, training starts from the beginning",
                       latest_path)
        return False
    return bool(resume)
