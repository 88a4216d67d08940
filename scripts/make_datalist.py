"""Write a bundle data list (training / validation / test) for an ISIC, PraNet or Kvasir-SEG folder.

Example:
    python scripts/make_datalist.py /data/kvasir-seg datalist.json \
        --test-names /data/kvasir-seg/pranet_kvasir_test_names.txt --val-fraction 0.1 --seed 0
then: python -m monai.bundle run ... --datalist_file datalist.json
"""

from __future__ import annotations

import argparse
import logging

from vmunetv2_monai.data import build_datalist, save_datalist


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset_dir", help="dataset root")
    parser.add_argument("output", help="JSON file to write")
    parser.add_argument("--layout", default="auto", choices=["auto", "pranet", "split", "isic", "flat", "kvasir"])
    parser.add_argument("--val-fraction", type=float, default=0.2, help="seeded share of the training pool")
    parser.add_argument("--test-fraction", type=float, default=0.0, help="seeded test share when there is no test set")
    parser.add_argument("--test-names", default=None, help="file of test-set names (one stem per line)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-is-test", action="store_true", help="paper protocol: validate on the test set")
    parser.add_argument("--no-check", action="store_true", help="skip reading every file header")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    datalist = build_datalist(
        args.dataset_dir,
        layout=args.layout,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        test_names_file=args.test_names,
        val_is_test=args.val_is_test,
        check=not args.no_check,
    )
    save_datalist(datalist, args.output)
    logging.info("wrote %s", args.output)


if __name__ == "__main__":
    main()
