"""The bundle's real configs, run as `python -m monai.bundle run` subprocesses from a folder outside bundle/,
on the shipped Kvasir sample plus synthetic images, with a tiny network (CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.slow  # runs python -m monai.bundle (training, evaluation, inference) in subprocesses

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundle"
CONFIGS = BUNDLE / "configs"
SAMPLE = REPO / "tests" / "data" / "kvasir_sample"
TINY = ["--depths", "[1,1,1,1]", "--dims", "16", "--d_state", "4", "--mid_channels", "8", "--image_size", "[32,32]"]


def _cfg(*names: str) -> str:
    return str([str(CONFIGS / f"{n}.json") for n in names])


def _run(args: list[str], cwd: Path, launcher: list[str] | None = None, timeout: int = 400) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = (launcher or [sys.executable]) + ["-m", "monai.bundle", "run", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _initialize_errors(wf) -> list[str]:
    """The messages of the exception chain raised by ``wf.initialize()`` (MONAI wraps config errors)."""
    with pytest.raises(Exception) as info:
        wf.initialize()
    messages, err = [], info.value
    while err is not None:
        messages.append(str(err))
        err = err.__cause__
    return messages


def _epoch(ckpt: dict) -> int:
    """Completed epochs stored in a latest.pt (ignite saves the iteration count and the epoch length)."""
    return ckpt["trainer"]["iteration"] // ckpt["trainer"]["epoch_length"]


def _make_dataset(root: Path) -> Path:
    """Kvasir sample pairs plus 4 synthetic PNG pairs (bright disc on noise, odd sizes)."""
    data = root / "data"
    shutil.copytree(SAMPLE, data)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 56), (48, 48), (37, 61), (52, 44)]):
        yy, xx = np.mgrid[:h, :w]
        disc = (yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (min(h, w) / 4) ** 2
        img = rng.integers(0, 90, (h, w, 3), dtype=np.uint8)
        img[disc] = 220
        Image.fromarray(img).save(data / "images" / f"synthetic{i}.png")
        Image.fromarray(disc.astype(np.uint8) * 255).save(data / "masks" / f"synthetic{i}.png")
    return data


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """2 epochs of training with MLflow tracking; returns (work dir, dataset dir, output dir, log)."""
    work = tmp_path_factory.mktemp("bundle")
    data = _make_dataset(work)
    out = work / "out"
    common = ["--bundle_root", str(BUNDLE), "--dataset_dir", str(data), "--output_dir", str(out),
              "--num_workers", "0", "--test_fraction", "0.2", *TINY]
    log = _run(["--config_file", _cfg("train"), *common, "--epochs", "2", "--batch_size", "4",
                "--progress_bar", "False", "--tracking", "mlflow", "--experiment_name", "vmunetv2_test"], cwd=work)
    return work, data, out, common, log


def test_train_writes_loadable_checkpoints_and_mlflow_run(trained):
    work, _, out, _, log = trained
    assert "Epoch[2] Metrics" in log and "val_pooled_dsc" in log
    best = torch.load(out / "models" / "model.pt", weights_only=True)
    assert any(k.startswith("encoder.") for k in best)  # raw state dict of the network
    latest = torch.load(out / "models" / "latest.pt", weights_only=True)
    assert _epoch(latest) == 2
    assert set(latest) == {"settings", "model", "optimizer", "trainer", "budget", "best_saver"}
    assert len(latest["budget"]["history"]) == 2  # validated after each epoch

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    exp = client.get_experiment_by_name("vmunetv2_test")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    metrics = runs[0].data.metrics
    for key in ("train_loss", "val_mean_dice", "val_mean_iou", "val_hd95", "val_pooled_dsc"):
        assert key in metrics, sorted(metrics)
    history = client.get_metric_history(runs[0].info.run_id, "val_mean_dice")
    assert sorted(m.step for m in history) == [1, 2]


def test_resume_continues_epoch_count(trained, tmp_path):
    work, _, out, common, _ = trained
    resumed = tmp_path / "resumed"
    shutil.copytree(out / "models", resumed / "models")
    log = _run(["--config_file", _cfg("train"), *common, "--output_dir", str(resumed), "--epochs", "3",
                "--batch_size", "4", "--progress_bar", "False", "--resume", "True"], cwd=work)
    assert "Epoch: 3/3" in log and "Epoch: 1/3" not in log and "Epoch: 2/3" not in log
    latest = torch.load(resumed / "models" / "latest.pt", weights_only=True)
    assert _epoch(latest) == 3


def test_evaluate_writes_per_case_csv_and_summary(trained):
    work, _, out, common, _ = trained
    _run(["--config_file", _cfg("train", "evaluate"), *common], cwd=work)
    summary = json.loads((out / "eval" / "summary.json").read_text())
    rows = (out / "eval" / "per_case.csv").read_text().strip().splitlines()
    assert rows[0] == "name,val_mean_dice,val_mean_iou,val_hd95,tp,fp,tn,fn"
    assert summary["num_cases"] == len(rows) - 1 == 2  # 20 % of 12 pairs
    for key in ("val_mean_dice", "val_mean_iou", "val_pooled_dsc", "val_pooled_iou", "val_pooled_accuracy",
                "val_pooled_sensitivity", "val_pooled_specificity"):
        assert 0.0 <= summary[key] <= 1.0, key
    dice = np.mean([float(r.split(",")[1]) for r in rows[1:]])
    assert abs(dice - summary["val_mean_dice"]) < 1e-5


def test_inference_writes_masks_at_input_size_and_overlays(trained):
    work, data, out, common, _ = trained
    _run(["--config_file", _cfg("inference"), *common], cwd=work)
    for src in sorted((data / "images").iterdir()):
        mask = Image.open(out / "predictions" / f"{src.stem}_mask.png")
        overlay = Image.open(out / "predictions" / f"{src.stem}_overlay.png")
        assert mask.size == overlay.size == Image.open(src).size, src.name
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
        assert overlay.mode == "RGB"


def test_check_properties_and_unknown_value(trained):
    from monai.bundle import ConfigWorkflow

    _, data, out, _, _ = trained
    overrides = {"bundle_root": str(BUNDLE), "dataset_dir": str(data), "output_dir": str(out), "test_fraction": 0.2}
    for wf_type, names in (("train", ("train",)), ("infer", ("inference",))):
        wf = ConfigWorkflow(config_file=[str(CONFIGS / f"{n}.json") for n in names], workflow_type=wf_type,
                            meta_file=str(CONFIGS / "metadata.json"), logging_file=str(CONFIGS / "logging.conf"),
                            **overrides)
        wf.initialize()
        assert wf.check_properties() in (None, [])
    wf = ConfigWorkflow(config_file=[str(CONFIGS / "inference.json")],
                        workflow_type="infer", meta_file=str(CONFIGS / "metadata.json"), spatial_mode="resise",
                        **overrides)
    messages = _initialize_errors(wf)
    assert any("unknown value 'resise' for 'spatial_mode'" in m for m in messages), messages


def test_multi_process_training(tmp_path, monkeypatch):
    """Two processes under torchrun: NCCL on two GPUs where there are two, else gloo on CPU (with one GPU the
    config would put rank 1 on a missing cuda:1, so the GPUs are hidden from the subprocesses)."""
    if torch.cuda.device_count() < 2:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    data = _make_dataset(tmp_path)
    out = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
    log = _run(["--config_file", _cfg("train", "multi_gpu_train"), "--bundle_root", str(BUNDLE),
                "--dataset_dir", str(data), "--output_dir", str(out), "--num_workers", "0", *TINY,
                "--epochs", "1", "--batch_size", "2", "--progress_bar", "False"], cwd=tmp_path, launcher=launcher)
    assert "Epoch[1] Metrics" in log
    latest = torch.load(out / "models" / "latest.pt", weights_only=True)
    assert _epoch(latest) == 1
    assert not any(k.startswith("module.") for k in latest["model"])


def test_multi_process_evaluation_equals_one_process(trained, tmp_path, monkeypatch):
    """multi_gpu_evaluate.json with two gloo processes writes the same per_case.csv rows and summary as
    evaluate.json in one process (the training split: enough cases to spread over the ranks)."""
    if torch.cuda.device_count() < 2:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    work, _, _, common, _ = trained
    single, multi = tmp_path / "single", tmp_path / "multi"
    common = [*common, "--eval_split", "training"]
    _run(["--config_file", _cfg("train", "evaluate"), *common, "--eval_dir", str(single)], cwd=work)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
    _run(["--config_file", _cfg("train", "evaluate", "multi_gpu_evaluate"), *common, "--eval_dir", str(multi)],
         cwd=work, launcher=launcher)

    def rows(folder: Path) -> dict[str, list[float]]:
        lines = (folder / "per_case.csv").read_text().strip().splitlines()
        return {r.split(",")[0]: [float(v) for v in r.split(",")[1:]] for r in lines[1:]}

    one, two = rows(single), rows(multi)
    assert len(one) >= 3
    assert one.keys() == two.keys()
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-4, atol=1e-4, err_msg=name)
    s1, s2 = (json.loads((f / "summary.json").read_text()) for f in (single, multi))
    assert s2["num_cases"] == s1["num_cases"] == len(one)
    assert abs(s2["val_mean_dice"] - s1["val_mean_dice"]) < 1e-4


def test_verify_net_in_out():
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_def", meta_file=str(CONFIGS / "metadata.json"),
                      config_file=[str(CONFIGS / "inference.json")], bundle_root=str(BUNDLE), n=2, device="cpu",
                      depths=[1, 1, 1, 1], dims=16, d_state=4, mid_channels=8)


def test_inference_reads_tiff_and_nifti(trained, tmp_path):
    """TIFF (PIL) and 2D grey NIfTI (nibabel) inputs: a PNG mask for the TIFF, a NIfTI mask for the NIfTI, at size."""
    import nibabel as nib

    work, _, out, common, _ = trained
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (45, 67, 3), dtype=np.uint8)).save(inputs / "slide.tif")
    grey = rng.integers(0, 255, (53, 41)).astype(np.float32)  # a 2D grey NIfTI, repeated to 3 channels
    nib.save(nib.Nifti1Image(grey, np.eye(4)), str(inputs / "scan.nii.gz"))
    pred_dir = tmp_path / "preds"
    args = [a if a != str(common[common.index("--dataset_dir") + 1]) else str(inputs) for a in common]
    _run(["--config_file", _cfg("inference"), *args, "--pred_dir", str(pred_dir)], cwd=work)
    assert Image.open(pred_dir / "slide_mask.png").size == (67, 45)
    mask = nib.load(str(pred_dir / "scan_mask.nii.gz")).get_fdata()
    assert mask.shape[:2] == (53, 41) and set(np.unique(mask)) <= {0.0, 1.0}


def test_patch_sampling_training(trained, tmp_path):
    """spatial_mode patch: random crops of image_size at native resolution train and save a checkpoint."""
    work, data, _, common, _ = trained
    args = [a if a != str(common[common.index("--output_dir") + 1]) else str(tmp_path / "out") for a in common]
    _run(["--config_file", _cfg("train"), *args, "--spatial_mode", "patch", "--epochs", "1",
          "--batch_size", "2", "--progress_bar", "False"], cwd=work)
    state = torch.load(tmp_path / "out" / "models" / "model.pt", weights_only=True)
    assert any(k.startswith("encoder.") for k in (state.get("model", state)))


def test_weight_average_is_validated_saved_and_resumed(trained, tmp_path):
    """ema_momentum: the best model.pt is the average (after one epoch, the latest's ema_model), not the trained
    weights; latest.pt keeps the average for a resume, which refuses another momentum."""
    work, _, _, common, _ = trained
    args = [a if a != str(common[common.index("--output_dir") + 1]) else str(tmp_path / "out") for a in common]
    run = ["--config_file", _cfg("train"), *args, "--batch_size", "4", "--progress_bar", "False"]
    _run([*run, "--epochs", "1", "--ema_momentum", "0.3"], cwd=work)
    best = torch.load(tmp_path / "out" / "models" / "model.pt", weights_only=True)
    latest = torch.load(tmp_path / "out" / "models" / "latest.pt", weights_only=True)
    assert set(latest) == {"settings", "model", "optimizer", "trainer", "budget", "best_saver", "ema_model"}
    assert all(torch.equal(best[k], latest["ema_model"][k]) for k in best)
    assert not all(torch.equal(best[k], latest["model"][k]) for k in best)
    _run([*run, "--epochs", "2", "--ema_momentum", "0.3", "--resume", "True"], cwd=work)
    resumed = torch.load(tmp_path / "out" / "models" / "latest.pt", weights_only=True)
    assert _epoch(resumed) == 2 and not all(torch.equal(resumed["ema_model"][k], latest["ema_model"][k]) for k in best)
    with pytest.raises(AssertionError, match="'ema_momentum' 0.3 -> 0.5"):
        _run([*run, "--epochs", "3", "--ema_momentum", "0.5", "--resume", "True"], cwd=work)


def test_evaluation_scores_the_checkpoint_it_loads_with_ema_momentum_set() -> None:
    """evaluate.json loads model.pt into network: its evaluator runs that network, not the training's average (a
    copy made before the checkpoint is loaded), also when the training overrides, ema_momentum included, are given."""
    from monai.bundle import ConfigParser

    parsed = {}
    for configs in (["train"], ["train", "evaluate"]):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / f"{name}.json") for name in configs])
        parser.update({"bundle_root": str(BUNDLE), "ema_momentum": 0.3, "num_workers": 0, "eval_split": "validation"})
        network = parser.get_parsed_content("network")
        parsed[configs[-1]] = parser.get_parsed_content("validate#evaluator").network is network
    assert parsed == {"train": False, "evaluate": True}  # training validates the average; evaluation the checkpoint


@pytest.mark.parametrize("bundle", [BUNDLE, REPO / "bundle_deepedit"])
def test_training_batches_are_plain_tensors(bundle: Path) -> None:
    """The trainer gets torch.Tensor batches, not MetaTensors (train#plain_tensors): MetaTensor's __torch_function__
    would wrap every operation of the network's step, a cost counted in the CPU-seconds budget."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser.update({"bundle_root": str(bundle), "dataset_dir": str(SAMPLE), "num_workers": 0, "image_size": [32, 32]})
    batch = next(iter(parser.get_parsed_content("train#dataloader")))
    assert {key: type(batch[key]) for key in ("image", "label")} == {"image": torch.Tensor, "label": torch.Tensor}


@pytest.mark.parametrize(("key", "value"), [("cache_rate", 1.5), ("early_stop_patience", -1)])
def test_bad_training_option_is_named(trained, key, value):
    from monai.bundle import ConfigWorkflow

    _, data, out, _, _ = trained
    wf = ConfigWorkflow(config_file=[str(CONFIGS / "train.json")],
                        workflow_type="train", meta_file=str(CONFIGS / "metadata.json"), bundle_root=str(BUNDLE),
                        dataset_dir=str(data), output_dir=str(out), test_fraction=0.2, **{key: value})
    messages = _initialize_errors(wf)
    assert any(f"bad value {value!r} for '{key}'" in m for m in messages), messages


def test_early_stopping_with_cached_data(trained, tmp_path):
    """early_stop_patience 1 with an unreachable min_delta stops after the second validation (of 6 epochs);
    cache_rate 1 trains from the in-memory cache."""
    work, _, _, common, _ = trained
    args = [a if a != str(common[common.index("--output_dir") + 1]) else str(tmp_path / "out") for a in common]
    log = _run(["--config_file", _cfg("train"), *args, "--epochs", "6", "--batch_size", "4",
                "--cache_rate", "1.0", "--early_stop_patience", "1", "--early_stop_min_delta", "2.0",
                "--progress_bar", "False"], cwd=work)
    assert "Loading dataset" in log  # CacheDataset's progress line: the images were cached
    assert _epoch(torch.load(tmp_path / "out" / "models" / "latest.pt", weights_only=True)) == 2


def test_kvasir_full_recipe_config(tmp_path):
    """kvasir_full.json merged over train.json: the test set is exactly the ids in the dataset's
    pranet_kvasir_test_names.txt, validation is carved from the rest, and the paper's setting is in place."""
    from monai.bundle import ConfigParser

    data = tmp_path / "kvasir"
    shutil.copytree(SAMPLE, data)
    names = sorted(p.stem for p in (data / "images").iterdir())
    (data / "pranet_kvasir_test_names.txt").write_text("\n".join(names[:3]) + "\n")
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f"{n}.json") for n in ("train", "kvasir_full")])
    parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(data)})
    splits = parser.get_parsed_content("datalists")
    assert sorted(it["name"] for it in splits["test"]) == names[:3]
    assert not {it["name"] for it in splits["training"] + splits["validation"]} & set(names[:3])
    assert len(splits["validation"]) >= 1
    assert parser.get_parsed_content("depths") == [2, 2, 9, 2]
    assert parser.get_parsed_content("image_size") == [256, 256]
    assert parser.get_parsed_content("epochs") == 300 and parser.get_parsed_content("budget_cpu_s") is None
    assert parser.get_parsed_content("early_stop_patience") == 30


def test_inference_mode_resize_and_unknown_mode(trained, tmp_path):
    """inference_mode resize: masks at the input size from the whole image resized to image_size; an unknown
    mode stops with its name."""
    work, data, out, common, _ = trained
    args = [a if a != str(common[common.index("--output_dir") + 1]) else str(out) for a in common]
    _run(["--config_file", _cfg("inference"), *args, "--inference_mode", "resize",
          "--pred_dir", str(tmp_path / "pred")], cwd=work)
    src = sorted((data / "images").iterdir())[0]
    mask = np.asarray(Image.open(tmp_path / "pred" / f"{src.stem}_mask.png"))
    assert mask.shape[:2] == np.asarray(Image.open(src)).shape[:2] and set(np.unique(mask)) <= {0, 255}
    with pytest.raises(AssertionError, match="unknown value 'tiles' for 'inference_mode'"):
        _run(["--config_file", _cfg("inference"), *args, "--inference_mode", "tiles"], cwd=work)


BUNDLE_ITEMS = ("LICENSE", "configs", "docs", "large_files.yml", "models", "sample_data")


def test_default_training_runs_in_a_copy_of_the_bundle(tmp_path):
    """model-zoo style: a copy of bundle/ (what git tracks), run from its root with train.json's defaults (the
    bundled sample data) and the explicit --overwrite_shipped_model True (without it the run is refused:
    tests/robustness/test_shipped_model_folder.py), loads with monai.bundle.load(workflow_type="train") and
    trains; the shipped model is replaced only by one that scores at least as well on the same validation images."""
    copy = tmp_path / "vmunetv2"
    copy.mkdir()
    for item in BUNDLE_ITEMS:
        (shutil.copytree if (BUNDLE / item).is_dir() else shutil.copy2)(BUNDLE / item, copy / item)
    shipped = (copy / "models" / "model.pt").read_bytes()
    log = _run(["--config_file", "configs/train.json", "--epochs", "1", "--progress_bar", "False",
                "--overwrite_shipped_model", "True"], cwd=copy)
    assert "model already at ./models/model.pt: val_mean_dice" in log
    latest = torch.load(copy / "models" / "latest.pt", weights_only=True)
    assert _epoch(latest) == 1 and latest["budget"]["history"]
    if (copy / "models" / "model.pt").read_bytes() == shipped:
        assert "NOT replaced" in log and (copy / "models" / "model.candidate.pt").is_file()
    else:
        assert "models/model.pt replaced" in log and list((copy / "models").glob("model.prev-*.pt"))

    code = ("import monai.bundle; net = monai.bundle.load(name='vmunetv2', bundle_dir='..', workflow_type='train', "
            "source='github'); print(type(net).__name__)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=copy, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("VMUNetV2"), proc.stderr[-3000:]


def test_optimizer_is_fused_on_cpu_and_cuda():
    """train.json's AdamW runs fused (one kernel per parameter: 22 -> 7 ms a step for the default network on one CPU
    thread) on the devices torch has that kernel for, and unfused elsewhere instead of failing to build; ``device``
    may be a torch.device or a string (MONAI Label's BundleTrainTask overrides it with "cpu" or "cuda")."""
    from monai.bundle import ConfigParser

    def optimizer(device: str):
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / "train.json"))
        parser.update({"bundle_root": str(BUNDLE), "device": device})
        return parser.get_parsed_content("optimizer")

    assert optimizer("$torch.device('cpu')").param_groups[0]["fused"] is True
    assert optimizer("cpu").param_groups[0]["fused"] is True
    assert optimizer("$torch.device('meta')").param_groups[0]["fused"] is False


def test_fine_tuning_settings_follow_init_weights_or_a_network_loader(tmp_path):
    """init_weights, or a network CheckpointLoader in train#handlers (what MONAI Label's stock /train inserts),
    switch train.json to finetune_learning_rate without warm-up; plain training keeps learning_rate."""
    from monai.bundle import ConfigParser

    def parsed(**overrides):
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / "train.json"))
        parser.update({"bundle_root": str(BUNDLE), "lr_warmup_fraction": 0.1, **overrides})
        return parser

    plain = parsed()
    assert plain.get_parsed_content("finetune") is False
    assert plain.get_parsed_content("optimizer").param_groups[0]["lr"] == 1e-3
    assert plain.get_parsed_content("lr_scheduler").warmup_fraction == 0.1
    tuned = parsed(init_weights=str(BUNDLE / "models" / "model.pt"))
    assert tuned.get_parsed_content("optimizer").param_groups[0]["lr"] == 1e-4
    assert tuned.get_parsed_content("lr_scheduler").warmup_fraction == 0.0
    loader = {"_target_": "CheckpointLoader", "load_path": str(BUNDLE / "models" / "model.pt"),
              "load_dict": {"model": "$@network"}, "strict": False}
    handlers = json.loads((CONFIGS / "train.json").read_text())["train"]["handlers"]
    stock = parsed(**{"train#handlers": [loader, *handlers]})
    assert stock.get_parsed_content("finetune") is True
    assert stock.get_parsed_content("optimizer").param_groups[0]["lr"] == 1e-4
