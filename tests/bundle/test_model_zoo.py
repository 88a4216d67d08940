"""The model-zoo's checks on the bundle (ci/verify_bundle.py and the premerge jobs), with configs/inference.json and
configs/train.json each read alone, as the model-zoo, MONAI Label and MONAI Deploy read them (CPU, tiny network)."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from monai.bundle import ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out
from monai.transforms import Compose

from vmunetv2_monai import VMUNetV2

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundle"
CONFIGS = BUNDLE / "configs"
SCHEMA = Path(__file__).parent / "data" / "meta_schema.json"
# Network ids of the standalone configs, shrunk for CPU tests (d_state 8: the compiled CPU scan takes it).
TINY = {"depths": [1, 1, 1, 1], "dims": 16, "d_state": 8, "mid_channels": 8, "image_size": [32, 32]}
NET_IDS = ("in_channels", "out_channels", "depths", "dims", "d_state", "ssm_ratio", "mid_channels", "drop_path_rate",
           "scan_backend", "keep_unused_stage", "use_checkpoint")


def _config(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


def test_required_files_and_large_files_list() -> None:
    """ci/verify_bundle.py: necessary files, the preferred inference config, and models/model.pt present or listed
    in large_files.yml (when present and a hash is recorded, the file matches it)."""
    for rel in ("configs/metadata.json", "LICENSE", "configs/inference.json", "configs/train.json", "docs/README.md"):
        assert (BUNDLE / rel).is_file(), rel
    entries = {e["path"]: e for e in yaml.safe_load((BUNDLE / "large_files.yml").read_text())["large_files"]}
    assert "models/model.pt" in entries
    model = BUNDLE / "models" / "model.pt"
    if model.is_file() and entries["models/model.pt"].get("hash_val"):
        assert entries["models/model.pt"]["hash_type"] == "sha256"
        assert hashlib.sha256(model.read_bytes()).hexdigest() == entries["models/model.pt"]["hash_val"]


def check_metadata(configs: Path, tmp_path: Path) -> dict:
    """What every bundle of this repository holds to in ``configs/metadata.json``: the model-zoo schema, the version
    first in the changelog, the supported apps that are tested, label 1 = lesion. Returns the metadata."""
    schema = tmp_path / "schema.json"  # verify_metadata only downloads when the file is missing
    shutil.copy(SCHEMA, schema)
    verify_metadata(meta_file=str(configs / "metadata.json"), filepath=str(schema))
    meta = json.loads((configs / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    assert next(iter(meta["changelog"])) == meta["version"]  # newest first
    # only what is tested: tests/label (stock monaibundle app) and tests/deploy (bundle operator)
    assert meta["supported_apps"] == {"monai-label": "0.8.5", "monai-deploy-app-sdk": "4.0.0"}
    channel_def = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert {v: int(k) for k, v in channel_def.items() if v != "background"} == {"lesion": 1}
    return meta


def check_pretty_json(bundle: Path) -> None:
    """pre-commit's pretty-format-json --no-sort-keys --indent=4 would change nothing in ``bundle``."""
    paths = sorted(bundle.rglob("*.json"))
    assert bundle / "configs" / "inference.json" in paths
    for path in paths:
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=4) + "\n", f"{path} is not pretty-formatted"


def test_verify_metadata_against_schema(tmp_path: Path) -> None:
    meta = check_metadata(CONFIGS, tmp_path)
    assert set(meta["eval_metrics"]) >= {"mean_dice", "pooled_dsc"}


def test_json_is_pretty_formatted() -> None:
    check_pretty_json(BUNDLE)


def test_standalone_configs_define_shared_ids_once() -> None:
    """inference.json and train.json each stand alone; every id both define has one value, so each definition is
    the same in both files (only the workflow ids differ): training reads images exactly as inference does."""
    inference, train = _config("inference"), _config("train")
    differing = sorted(k for k in inference.keys() & train.keys() if inference[k] != train[k])
    assert differing == ["_desc_", "initialize", "keys", "read_transforms", "run"]
    assert inference["read_transforms"] == train["read_transforms"][:-1]  # the images are read alike; the masks
    assert train["read_transforms"][-1]["_target_"].endswith("BinarizeMaskd")  # only training reads
    assert "_disabled_" not in json.dumps(train) + json.dumps(inference)  # no switches: variants are override files
    assert train["dataset_dir"] == "$os.path.join(@bundle_root, 'sample_data')"  # data inside the bundle
    for name in ("evaluate", "multi_gpu_train", "multi_gpu_evaluate", "kvasir_full", "kvasir_cpu"):
        unknown = {k.split("#")[0] for k in _config(name)} - set(train) - {"_desc_", "initialize", "run", "finalize"}
        assert unknown <= {"eval_split", "find_unused_parameters", "dist_backend", "is_not_rank0"}, (name, unknown)


def test_inference_labels_reads_masks_as_training_does() -> None:
    """inference_labels.json (merged over inference.json) reads the mask beside each image with train.json's read
    transforms, so predictions are scored against the masks training saw."""
    labels, train = _config("inference_labels"), _config("train")
    assert set(labels) == {"_desc_", "keys", "read_transforms"}
    assert labels["keys"] == train["keys"] == ["image", "label"]
    assert labels["read_transforms"] == train["read_transforms"]
    wf = ConfigWorkflow(config_file=[str(CONFIGS / "inference.json"), str(CONFIGS / "inference_labels.json")],
                        workflow_type="infer", meta_file=str(CONFIGS / "metadata.json"), bundle_root=str(BUNDLE))
    sample = sorted((BUNDLE / "sample_data" / "images").iterdir())[0]
    item = Compose(wf.parser.get_parsed_content("load_transforms"))(
        {"image": str(sample), "label": str(BUNDLE / "sample_data" / "masks" / f"{sample.stem}.png")})
    assert item["image"].shape[0] == 3 and set(torch.unique(item["label"]).tolist()) == {0.0, 1.0}


def test_inference_trt_overrides_only_inference_ids() -> None:
    """inference_trt.json (model-zoo pattern, merged over inference.json) replaces the network by the TensorRT
    TorchScript and disables the checkpoint loader; every id it sets exists in inference.json, and the import list
    is inference.json's plus torch_tensorrt. (Running it needs a GPU with torch_tensorrt: untested here.)"""
    inference, trt = _config("inference"), _config("inference_trt")
    assert {k.split("#")[0] for k in trt} - set(inference) <= {"_desc_", "trt_path"}
    assert trt["imports"] == [*inference["imports"][:2], "$import torch_tensorrt", *inference["imports"][2:]]
    assert inference["handlers"][0]["_target_"].endswith("CheckpointLoader") and trt["handlers#0#_disabled_"]
    assert trt["network_def"] == "$torch.jit.load(@trt_path)" and trt["amp"] == "off"


def test_kvasir_full_holds_the_paper_network() -> None:
    full = _config("kvasir_full")
    assert {k: full[k] for k in ("depths", "dims", "drop_path_rate", "keep_unused_stage", "image_size")} == {
        "depths": [2, 2, 9, 2], "dims": 96, "drop_path_rate": 0.2, "keep_unused_stage": True, "image_size": [256, 256]}


@pytest.mark.parametrize("workflow_type, name", [("infer", "inference"), ("train", "train")])
def test_check_properties(workflow_type: str, name: str) -> None:
    """As the model-zoo's check_workflow: initialize (MONAI 1.6 parses only then), then check the properties."""
    wf = ConfigWorkflow(config_file=str(CONFIGS / f"{name}.json"), workflow_type=workflow_type,
                        meta_file=str(CONFIGS / "metadata.json"), logging_file=str(CONFIGS / "logging.conf"),
                        bundle_root=str(BUNDLE), dataset_dir=str(REPO / "tests" / "data" / "kvasir_sample"),
                        batch_size=2, num_workers=0, **{k: v for k, v in TINY.items() if k != "image_size"})
    wf.initialize()
    assert wf.check_properties() == []


def test_verify_net_in_out_with_inference_config_alone() -> None:
    verify_net_in_out(net_id="network_def", meta_file=str(CONFIGS / "metadata.json"),
                      config_file=str(CONFIGS / "inference.json"), bundle_root=str(BUNDLE), n=2, device="cpu",
                      **{k: v for k, v in TINY.items() if k != "image_size"})


@pytest.mark.parametrize("use_trace", [False, True])
@pytest.mark.slow  # TorchScript export (scripting and tracing) of the bundle's network
def test_ckpt_export_with_inference_config_alone(tmp_path: Path, use_trace: bool) -> None:
    """The model-zoo's TorchScript check (scripting; tracing too) on a copy of the bundle with fresh weights at
    models/model.pt; the exported module is reloaded and compared with the eager network."""
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("models"))
    net_args = {k: v for k, v in TINY.items() if k != "image_size"}
    inference = _config("inference")
    kwargs = {k: inference[k] for k in NET_IDS if k not in net_args} | net_args
    net = VMUNetV2(spatial_dims=2, deep_supervision=True, **kwargs).eval()
    (bundle / "models").mkdir()
    torch.save(net.state_dict(), bundle / "models" / "model.pt")
    ts = bundle / "models" / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(bundle / "models" / "model.pt"),
                meta_file=str(bundle / "configs" / "metadata.json"),
                config_file=str(bundle / "configs" / "inference.json"),
                bundle_root=str(bundle), use_trace=use_trace, input_shape=[1, 3, 64, 64], **net_args)
    loaded = torch.jit.load(str(ts))
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))
    # Every pin of metadata.json survives into the export (MONAI renames optional_packages_version to
    # required_packages_version, which would drop the real pins).
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert "optional_packages_version" not in meta
    with zipfile.ZipFile(ts) as archive:
        name = next(n for n in archive.namelist() if n.endswith("extra/metadata.json"))
        exported = json.loads(archive.read(name))
    for key in ("monai_version", "pytorch_version", "numpy_version"):
        assert exported[key] == meta[key], key
    assert exported["required_packages_version"] == meta["required_packages_version"]
    assert {"vmunetv2-monai", "pytorch-ignite", "mlflow"} <= set(exported["required_packages_version"])
