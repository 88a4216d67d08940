"""The AMP policy behind the bundle's ``amp`` setting (vmunetv2_monai.ops.autocast_dtype)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

import vmunetv2_monai.ops.amp as amp_mod
from vmunetv2_monai.ops import autocast_dtype

CUDA = torch.device("cuda", 0)  # a device object needs no GPU; torch.cuda.is_bf16_supported is patched below


@pytest.fixture
def bf16(monkeypatch):
    """Set whether the (pretend) CUDA device supports bf16; warnings are logged afresh per test."""
    monkeypatch.setattr(amp_mod, "_warned", set())

    def set_support(ok: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: ok)

    return set_support


@pytest.mark.parametrize("amp", ["auto", True])
def test_auto_is_bf16_where_supported_else_off(bf16, amp) -> None:
    bf16(True)
    assert autocast_dtype(amp, CUDA) is torch.bfloat16
    bf16(False)
    assert autocast_dtype(amp, CUDA) is None


@pytest.mark.parametrize("amp", ["auto", "bf16", "fp16", True])
def test_never_on_cpu(bf16, amp) -> None:
    bf16(True)
    assert autocast_dtype(amp, torch.device("cpu")) is None
    assert autocast_dtype(amp, "cpu") is None


@pytest.mark.parametrize("amp", ["off", False])
def test_off(bf16, amp) -> None:
    bf16(True)
    assert autocast_dtype(amp, CUDA) is None


def test_fp16_only_by_explicit_choice_and_warns_once(bf16, caplog) -> None:
    bf16(False)
    with caplog.at_level(logging.WARNING, logger=amp_mod.__name__):
        assert autocast_dtype("fp16", CUDA) is torch.float16
        assert autocast_dtype("fp16", CUDA) is torch.float16
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dt_projs_weight" in warnings[0]


def test_bf16_on_a_device_without_it_is_an_error(bf16) -> None:
    bf16(False)
    with pytest.raises(RuntimeError, match="does not support bf16"):
        autocast_dtype("bf16", CUDA)


@pytest.mark.parametrize("amp", ["float16", "yes", 1, None])
def test_unknown_setting_is_named(amp) -> None:
    with pytest.raises(ValueError, match="amp must be one of"):
        autocast_dtype(amp, "cpu")


def _engines(node, found: list) -> list:
    """Every MONAI trainer / evaluator definition (a dict with such a ``_target_``) in a parsed JSON config."""
    if isinstance(node, dict):
        if node.get("_target_") in ("SupervisedTrainer", "SupervisedEvaluator"):
            found.append(node)
        for value in node.values():
            _engines(value, found)
    elif isinstance(node, list):
        for value in node:
            _engines(value, found)
    return found


def test_bundle_engines_get_the_policy() -> None:
    """Whatever the file layout: every engine in bundle/configs takes its AMP from ``amp_dtype`` =
    ``autocast_dtype(@amp, @device)`` through ``use_amp`` and ``amp_kwargs`` (defined once in each stand-alone
    config), ``amp`` is "auto" by default and "off" in the paper recipe and for the TensorRT engine (its precision
    is the engine's), and the expressions resolve in a MONAI config."""
    from monai.bundle import ConfigParser

    configs = Path(__file__).resolve().parents[2] / "bundle" / "configs"
    engines, defaults = [], {}
    for path in sorted(configs.glob("*.json")):
        config = json.loads(path.read_text())
        _engines(config, engines)
        if "amp" in config:
            defaults[path.name] = config["amp"]
        if "amp_dtype" in config:
            assert config["amp_dtype"] == "$vmunetv2_monai.ops.autocast_dtype(@amp, @device)", path
            assert config["use_amp"] == "$@amp_dtype is not None", path
            assert config["amp_kwargs"] == {"dtype": "@amp_dtype"}, path
    assert len(engines) >= 3  # training, validation, inference
    for engine in engines:
        assert engine["amp"] == "@use_amp" and engine["amp_kwargs"] == "@amp_kwargs"
    assert defaults.pop("kvasir_full.json") == "off"
    assert defaults.pop("inference_trt.json") == "off"
    assert defaults and set(defaults.values()) == {"auto"}, defaults
    parser = ConfigParser({"imports": ["$import torch", "$import vmunetv2_monai"], "amp": "auto",
                           "amp_dtype": "$vmunetv2_monai.ops.autocast_dtype(@amp, @device)",
                           "use_amp": "$@amp_dtype is not None", "amp_kwargs": {"dtype": "@amp_dtype"},
                           "device": "$torch.device('cpu')", "engine": {"amp": engines[0]["amp"],
                                                                       "amp_kwargs": engines[0]["amp_kwargs"]}})
    assert parser.get_parsed_content("engine") == {"amp": False, "amp_kwargs": {"dtype": None}}
