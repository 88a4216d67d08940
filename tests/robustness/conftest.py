"""Helpers for the robustness suite: the bundle's real configs, tiny networks, odd files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.transforms import Compose
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundle"
CONFIGS = BUNDLE / "configs"
SAMPLE = REPO / "tests" / "data" / "kvasir_sample"
TINY = {"depths": [1, 1, 1, 1], "dims": 16, "d_state": 4, "mid_channels": 8, "image_size": [32, 32]}
TINY_ARGS = [a for k, v in TINY.items() for a in (f"--{k}", str(v).replace(" ", ""))]


def cfg(*names: str) -> list[str]:
    return [str(CONFIGS / f"{n}.json") for n in names]


def run_bundle(args: list[str], cwd: Path, timeout: int = 400) -> tuple[int, str]:
    """``python -m monai.bundle run ARGS``; returns (exit status, stdout + stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def tail(out: str, lines: int = 15) -> str:
    """The end of a command's output: what a user reads first."""
    return "\n".join(out.strip().splitlines()[-lines:])


def load_transforms(keys: tuple[str, ...] = ("image", "label")) -> Compose:
    """The bundle's ``load_transforms`` for ``keys``: train.json's for images with masks, inference.json's (which
    reads images only) for ``("image",)``."""
    parser = ConfigParser()
    parser.read_config(cfg("train" if "label" in keys else "inference"))
    parser["keys"] = list(keys)
    return Compose(parser.get_parsed_content("load_transforms"))


def workflow(configs: tuple[str, ...], **overrides) -> ConfigWorkflow:
    """A ``ConfigWorkflow`` of the bundle's configs, run in this process."""
    kind = "infer" if "inference" in configs else "train"
    return ConfigWorkflow(config_file=cfg(*configs), workflow_type=kind, meta_file=str(CONFIGS / "metadata.json"),
                          bundle_root=str(BUNDLE), **{"num_workers": 0, **TINY, **overrides})


def error_chain(fn) -> str:
    """Call ``fn``; it must raise. Returns the messages of the exception chain, joined."""
    with pytest.raises(Exception) as info:
        fn()
    messages, err = [], info.value
    while err is not None:
        messages.append(f"{type(err).__name__}: {err}")
        err = err.__cause__
    return "\n".join(messages)


def disc_pair(folder: Path, name: str, size: tuple[int, int] = (40, 48)) -> None:
    """A synthetic RGB image (bright disc on noise) and its 0/255 mask as ``images/name.png``, ``masks/name.png``."""
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 4) ** 2
    img = np.random.default_rng(len(name)).integers(0, 90, (h, w, 3), dtype=np.uint8)
    img[disc] = 220
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(folder / "images" / f"{name}.png")
    Image.fromarray(disc.astype(np.uint8) * 255).save(folder / "masks" / f"{name}.png")


def tiny_state(path: Path) -> Path:
    """An untrained state dict of inference.json's network with :data:`TINY` settings, saved at ``path``."""
    parser = ConfigParser()
    parser.read_config(cfg("inference"))
    parser.update(TINY)
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A flat (Kvasir-style) dataset of 6 synthetic pairs."""
    root = tmp_path / "data"
    for i in range(6):
        disc_pair(root, f"case{i}")
    return root
