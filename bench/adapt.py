"""What double-step transfer learning buys on a new surface: before adapting, after, and random init.

    .venv/bin/python bench/adapt.py                                   # demo model, generated asphalt
    .venv/bin/python bench/adapt.py --base-model runs/demo --data NEW --holdout NEW_TEST --epochs 8 --image-size 224

Three rows on the held-out images of the new surface, each at its model's own
threshold (and at 0.5): (1) the base model as it is; (2) the base model adapted
with ``cracknet train --base-model`` on the small labelled set; (3) a model
trained from random init on the same set with the same epochs, image size and
normalisation — the value of the first step. The base model is judged at its own
image size; the other two at --image-size (adapting may change it). Without --data/--holdout it
generates them: 300 labelled and 400 held-out tiles of the asphalt surface
(``cracknet.synthetic``), different seeds. Real data of your own structures is
what this benchmark is for: pass their labelled trees.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cracknet.card import read_card  # noqa: E402
from cracknet.config import TrainConfig  # noqa: E402
from cracknet.evaluate import evaluate  # noqa: E402
from cracknet.synthetic import adaptation_sets  # noqa: E402
from cracknet.train import run_training  # noqa: E402

DEMO_MODEL = os.path.join(os.path.dirname(__file__), "..", "runs", "demo", "model")


def row(name: str, report: dict, seconds: float | None = None) -> str:
    m, half = report["metrics"], report["metrics_at_0.5"]
    took = f"{seconds:>7.0f} s" if seconds is not None else ""
    return (f"{name:<28}{m['accuracy']:>9.4f}{m['precision']:>11.4f}{m['recall']:>8.4f}{report['threshold']:>11.3f}"
            f"{half['accuracy']:>11.4f}{half['recall']:>9.4f}{took}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", default=DEMO_MODEL, help="the crack model to adapt (default: make demo's)")
    parser.add_argument("--data", help="the small labelled set of the new surface (default: 300 generated tiles)")
    parser.add_argument("--holdout", help="other labelled images of that surface (default: 400 generated tiles)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=128,
                        help="model input side for the adapted and random-init models (default 128: the generated "
                             "surface's cracks are 3-4 px wide in 227 px tiles, under a pixel at 64 px)")
    parser.add_argument("--num-workers", type=int, default=1)
    args = parser.parse_args()

    base = read_card(args.base_model)
    with tempfile.TemporaryDirectory() as scratch:
        data, holdout = args.data, args.holdout
        if not data or not holdout:
            data, holdout = os.path.join(scratch, "asphalt"), os.path.join(scratch, "asphalt-holdout")
            adaptation_sets(data, holdout)
        before = evaluate(base["folder"], holdout)
        rows = [row("before (base model)", before)]
        size = args.image_size
        common = dict(data=data, epochs=args.epochs, image_size=size, batch_size=32, num_workers=args.num_workers,
                      overwrite=True)
        runs = {
            "adapted from the base": TrainConfig(output=os.path.join(scratch, "adapted"), base_model=base["folder"],
                                                 **common),
            # Same epochs, size, stronger augmentation and best-epoch rule; only the starting weights differ.
            "random init, same budget": TrainConfig(output=os.path.join(scratch, "scratch"), weights="none",
                                                    augmentation="strong", keep="best", **common),
        }
        for name, cfg in runs.items():
            started = time.monotonic()
            card = run_training(cfg, log=lambda line: print(line, flush=True))
            rows.append(row(name, evaluate(card["folder"], holdout), time.monotonic() - started))
        n = before["metrics"]
    print(f"\nHeld-out images of the new surface: {holdout if args.holdout else 'generated asphalt'} "
          f"({n['n']} images, {n['tp'] + n['fn']} cracks); base model {base['model_id']} trained on "
          f"{base.get('data', {}).get('uri')}; {args.epochs} epochs at {size} px, {os.cpu_count()} CPUs.")
    print(f"{'':<28}{'accuracy':>9}{'precision':>11}{'recall':>8}{'threshold':>11}{'acc @0.5':>11}{'rec @0.5':>9}"
          f"{'train':>9}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
