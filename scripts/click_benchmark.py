"""Simulated-annotator benchmark of the interactive (DeepEdit-type) bundle on the Kvasir-SEG test ids.

Each test image (the 100 PraNet ids, at its original resolution) is segmented by the interactive bundle's inference
config (network, preprocessing with the clicks, inferer, postprocessing: the one inference path) with no clicks,
then with one click more per round, up to --max-clicks: each at the interior point (distance-transform maximum) of
the largest error region of the current mask, foreground or background as the error is
(:func:`vmunetv2_monai.interactive.next_click`). The automatic bundle's model scored through its own inference
config is the zero-click baseline.

Prints a table of mean Dice after 0, 1, 2, 3, 5 and 10 clicks and NoC@85 / NoC@90 (clicks to reach that Dice,
--max-clicks when never reached), each with a 95 % bootstrap interval over images, and writes --out/clicks.csv
(Dice per image and click count), --out/summary.json, --out/click_benchmark.md and --out/click_curve.png.

    python scripts/click_benchmark.py --data-dir ../shared/data/kvasir-seg --out outputs/click_benchmark
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vmunetv2_monai.bundle import DEFAULT_BUNDLE, Bundle
from vmunetv2_monai.checkpoints import load_state_dict
from vmunetv2_monai.data.datalist import build_datalist
from vmunetv2_monai.evaluation.stats import mean_interval
from vmunetv2_monai.files import atomic_write, write_json
from vmunetv2_monai.interactive import next_click
from vmunetv2_monai.metrics import dice_score

REPO = Path(__file__).resolve().parents[1]
CLICK_COUNTS = (0, 1, 2, 3, 5, 10)
THRESHOLDS = (0.85, 0.90)
logger = logging.getLogger("click_benchmark")


class BundleModel:
    """A bundle's inference config with ``inference_labels.json`` (masks read as in training) and its weights
    loaded, on the CPU."""

    def __init__(self, bundle_dir: Path, weights: Path | None = None) -> None:
        bundle = Bundle(bundle_dir)
        self.parser = bundle.config(["inference", "inference_labels"])
        self.network = self.parser.get_parsed_content("network")
        self.network.load_state_dict(load_state_dict(weights or bundle.model_path))
        self.network.eval()
        self.load = self.parser.get_parsed_content("load_transforms")
        self.click_guidance = self.parser.get_parsed_content("click_guidance") if "click_guidance" in \
            self.parser.config else None
        self.inferer = self.parser.get_parsed_content("inferer")
        self.postprocessing = self.parser.get_parsed_content("postprocessing")

    def read(self, image: str, label: str) -> dict[str, Any]:
        d: dict[str, Any] = {"image": image, "label": label}
        for t in self.load:
            d = t(d)
        return d

    def mask(self, item: Mapping[str, Any], clicks: Mapping[str, list] | None = None) -> np.ndarray:
        """Boolean mask (W, H) for ``item`` with ``clicks`` ({"foreground": [...], "background": [...]})."""
        d = dict(item)
        if self.click_guidance is not None:
            d = self.click_guidance({**d, **(clicks or {})})
        elif clicks and any(clicks.values()):
            raise ValueError("the automatic model takes no clicks")
        with torch.no_grad():
            logits = self.inferer(torch.as_tensor(d["image"])[None].float(), self.network)[0]
        return np.asarray(self.postprocessing({"pred": logits})["pred"]).astype(bool)


def click_curve(model: BundleModel, item: Mapping[str, Any], max_clicks: int) -> list[float]:
    """Dice after 0..max_clicks simulated clicks (the last value repeats once the mask is perfect)."""
    label = np.asarray(item["label"][0]) > 0
    clicks: dict[str, list] = {"foreground": [], "background": []}
    pred = model.mask(item, clicks)
    scores = [dice_score(pred, label)]
    for _ in range(max_clicks):
        click = next_click(pred, label)
        if click is None:
            scores.append(scores[-1])
            continue
        clicks[click[0]].append(click[1])
        pred = model.mask(item, clicks)
        scores.append(dice_score(pred, label))
    return scores


def noc(scores: Sequence[float], threshold: float, max_clicks: int) -> int:
    """Clicks needed to reach ``threshold`` (``max_clicks`` when never)."""
    return next((k for k, s in enumerate(scores) if s >= threshold), max_clicks)


def summarise(curves: Mapping[str, Sequence[float]], baseline: Mapping[str, float], max_clicks: int) -> dict:
    names = sorted(curves)
    table = np.array([curves[n] for n in names])
    out: dict[str, Any] = {"images": len(names), "max_clicks": max_clicks,
                           "automatic_baseline_dice": mean_interval([baseline[n] for n in names])}
    out["dice_after"] = {str(k): mean_interval(table[:, k]) for k in CLICK_COUNTS if k <= max_clicks}
    for t in THRESHOLDS:
        out[f"noc@{int(t * 100)}"] = mean_interval([noc(curves[n], t, max_clicks) for n in names])
    return out


def markdown(summary: Mapping[str, Any]) -> str:
    def cell(s: Mapping[str, float], digits: int = 3) -> str:
        return f"{s['value']:.{digits}f} [{s['low']:.{digits}f}, {s['high']:.{digits}f}]"

    title = (f"Simulated annotator on {summary['images']} Kvasir-SEG test images (PraNet ids, original resolution); "
             "95 % bootstrap intervals over images.")
    lines = [title, "", "| clicks | mean Dice |", "|---|---|",
             f"| automatic model (bundle/) | {cell(summary['automatic_baseline_dice'])} |"]
    lines += [f"| {k} | {cell(v)} |" for k, v in summary["dice_after"].items()]
    lines += ["", f"| NoC (cap {summary['max_clicks']}) | clicks |", "|---|---|"]
    lines += [f"| {k} | {cell(summary[k], 2)} |" for k in summary if k.startswith("noc@")]
    return "\n".join(lines) + "\n"


def plot(curves: Mapping[str, Sequence[float]], baseline: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = np.array(list(curves.values()))
    k = np.arange(table.shape[1])
    intervals = [mean_interval(table[:, i]) for i in k]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(k, [i["value"] for i in intervals], marker="o", label="interactive VM-UNetV2")
    ax.fill_between(k, [i["low"] for i in intervals], [i["high"] for i in intervals], alpha=0.25)
    ax.axhline(baseline, color="grey", linestyle="--", label="automatic model")
    ax.set(xlabel="clicks", ylabel="mean Dice (test ids)", ylim=(min(0.6, baseline - 0.05), 1.0))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="Kvasir-SEG folder (any layout the bundle reads)")
    parser.add_argument("--names", type=Path, help="test ids (default <data-dir>/pranet_kvasir_test_names.txt)")
    parser.add_argument("--bundle", type=Path, default=REPO / "bundle_deepedit", help="the interactive bundle")
    parser.add_argument("--weights", type=Path, help="interactive weights (default <bundle>/models/model.pt)")
    parser.add_argument("--automatic-bundle", type=Path, default=DEFAULT_BUNDLE, help="zero-click baseline bundle")
    parser.add_argument("--max-clicks", type=int, default=20)
    parser.add_argument("--limit", type=int, help="only the first N test ids (a quick look)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)

    test = build_datalist(args.data_dir, test_names_file=args.names or args.data_dir / "pranet_kvasir_test_names.txt",
                          val_fraction=0.1, seed=42)["test"][: args.limit]
    pairs = {Path(p["image"]).stem: p for p in test}
    names = list(pairs)
    interactive = BundleModel(args.bundle, args.weights)
    automatic = BundleModel(args.automatic_bundle)
    curves: dict[str, list[float]] = {}
    baseline: dict[str, float] = {}
    for i, name in enumerate(names, 1):
        item = interactive.read(pairs[name]["image"], pairs[name]["label"])
        curves[name] = click_curve(interactive, item, args.max_clicks)
        base = automatic.read(pairs[name]["image"], pairs[name]["label"])
        baseline[name] = dice_score(automatic.mask(base), np.asarray(base["label"][0]) > 0)
        logger.info("%d/%d %s: Dice %.3f -> %.3f (3 clicks) -> %.3f (5 clicks); automatic %.3f", i, len(names), name,
                    curves[name][0], curves[name][min(3, args.max_clicks)], curves[name][min(5, args.max_clicks)],
                    baseline[name])

    summary = summarise(curves, baseline, args.max_clicks)
    args.out.mkdir(parents=True, exist_ok=True)

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["name", "automatic", *[f"dice_{k}" for k in range(args.max_clicks + 1)]])
            for n in names:
                w.writerow([n, f"{baseline[n]:.6f}", *[f"{s:.6f}" for s in curves[n]]])

    atomic_write(args.out / "clicks.csv", write_csv)
    write_json(args.out / "summary.json", summary)
    text = markdown(summary)
    atomic_write(args.out / "click_benchmark.md", lambda tmp: Path(tmp).write_text(text))
    plot(curves, summary["automatic_baseline_dice"]["value"], args.out / "click_curve.png")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
