"""Write the interactive (DeepEdit-type) bundle's generated files from the automatic bundle.

``bundle_deepedit/`` is a stand-alone bundle that MONAI Label's stock ``monaibundle`` app serves as a DeepEdit model
(the folder name holds "deepedit"). Its ``configs/train.json`` and ``configs/inference.json`` are ``bundle/``'s,
merged with ``bundle/configs/deepedit_train.json`` and ``deepedit_inference.json`` (MONAI's own config merge,
``ConfigParser.load_config_files``), so the two bundles share one definition of every other id.
``logging.conf``, ``inference_labels.json`` and ``sample_data/`` are copied. Hand-written files (metadata, model
card, licence, ``large_files.yml``) and the weights are not touched, except that ``--model`` installs new
weights and their sha256.

    python scripts/make_deepedit_bundle.py                      # regenerate bundle_deepedit/ configs
    python scripts/make_deepedit_bundle.py --check              # exit 1 if they are stale
    python scripts/make_deepedit_bundle.py --model runs/x/models/model.pt
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import json
import logging
import shutil
import sys
from pathlib import Path

from monai.bundle import ConfigParser

from vmunetv2_monai.bundle import DEFAULT_BUNDLE
from vmunetv2_monai.files import atomic_write

SOURCE = DEFAULT_BUNDLE
TARGET = DEFAULT_BUNDLE.parent / "bundle_deepedit"
MERGED = {"train.json": "deepedit_train.json", "inference.json": "deepedit_inference.json"}
COPIED = ("configs/logging.conf", "configs/inference_labels.json", "sample_data")
logger = logging.getLogger("make_deepedit_bundle")


def merged_configs() -> dict[str, str]:
    """Generated config file name -> its JSON text."""
    out = {}
    for name, overrides in MERGED.items():
        config = ConfigParser.load_config_files([SOURCE / "configs" / name, SOURCE / "configs" / overrides])
        out[name] = json.dumps(config, indent=4) + "\n"
    return out


def stale(target: Path) -> list[str]:
    """Generated files of ``target`` that differ from what this script would write."""
    found = [f"configs/{n}" for n, text in merged_configs().items()
             if not (target / "configs" / n).is_file() or (target / "configs" / n).read_text() != text]
    for rel in COPIED:
        src, dst = SOURCE / rel, target / rel
        if src.is_dir():
            cmp = filecmp.dircmp(src, dst) if dst.is_dir() else None
            if cmp is None or cmp.left_only or cmp.right_only or cmp.diff_files or any(
                    c.left_only or c.right_only or c.diff_files for c in cmp.subdirs.values()):
                found.append(rel)
        elif not dst.is_file() or not filecmp.cmp(src, dst, shallow=False):
            found.append(rel)
    return found


def install_model(model: Path, target: Path) -> str:
    """Copy ``model`` to ``target/models/model.pt`` (atomically) and record its sha256 in ``large_files.yml``."""
    data = model.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    atomic_write(target / "models" / "model.pt", lambda tmp: Path(tmp).write_bytes(data))
    listing = target / "large_files.yml"
    text = listing.read_text()
    start = text.index('hash_val: "') + len('hash_val: "')
    text = text[:start] + digest + text[text.index('"', start):]
    atomic_write(listing, lambda tmp: Path(tmp).write_text(text))
    return digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=Path, default=TARGET, help="the interactive bundle folder")
    parser.add_argument("--check", action="store_true", help="only report stale generated files (exit 1 if any)")
    parser.add_argument("--model", type=Path, help="install these weights as models/model.pt (sha256 recorded)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.check:
        found = stale(args.target)
        for rel in found:
            logger.error("%s is stale: run python scripts/make_deepedit_bundle.py", args.target / rel)
        return 1 if found else 0
    for name, text in merged_configs().items():
        atomic_write(args.target / "configs" / name, lambda tmp, t=text: Path(tmp).write_text(t))
    for rel in COPIED:
        src, dst = SOURCE / rel, args.target / rel
        if src.is_dir():
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(src, dst)
        else:
            shutil.copyfile(src, dst)
    if args.model is not None:
        logger.info("installed %s as %s (sha256 %s)", args.model, args.target / "models" / "model.pt",
                    install_model(args.model, args.target))
    logger.info("wrote %s", args.target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
