"""What double-step transfer learning buys on a new surface: before adapting, after, and random init.

    .venv/bin/python bench/adapt.py                                   # generated pavement photos, grouped
    .venv/bin/python bench/adapt.py --base-model runs/base --data NEW --holdout NEW_TEST --group-by '(.*)_x\\d+_y\\d+'

Three rows on held-out *photos* of the new surface, each at its model's own
threshold (with 95% intervals that resample photos) and at 0.5: (1) the base model as it is; (2) the base model adapted
with ``cracknet train --base-model`` on the small labelled set; (3) a model
trained from random init on the same set with the same epochs, image size,
augmentation and best-epoch rule — the value of the first step. Training splits
keep each photo's tiles together (``--group-by``, default: photo folders where
the tree has them), so validation, and the threshold chosen on it, see photos
the model did not train on; the held-out set holds other photos again. The base
model is judged at its own image size; the other two at --image-size. Then, per
trained model, whether its card's test interval covers the accuracy on the
held-out photos, and the held-out photos it does worst on.

Without --data/--holdout it generates the hard pavement surface
(``cracknet.demo.synthetic``): 40 photos to adapt on, 40 others held out, each cut
into 4 x 3 tiles of 96 px. Real data of your own structures is what this
benchmark is for: pass labelled trees of whole photos.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cracknet.demo.synthetic import generate_photos  # noqa: E402
from cracknet.model.card import read_card  # noqa: E402
from cracknet.predict.evaluate import evaluate  # noqa: E402
from cracknet.train.config import TrainConfig  # noqa: E402
from cracknet.train.driver import run_training  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..", "runs")
BASES = (os.path.join(ROOT, "base", "model"), os.path.join(ROOT, "demo", "model"))  # bench/base_model.py's, make demo's


def row(name: str, report: dict, seconds: float | None = None) -> str:
    """One model on the held-out photos, at its own threshold (with 95% intervals resampling photos) and at 0.5."""
    m, half = report["metrics"], report["metrics_at_0.5"]
    took = f"{seconds:>7.0f} s" if seconds is not None else ""
    false_alarms = m["fp"] / max(1, m["fp"] + m["tn"])
    ci = {k: "[{:.2f}, {:.2f}]".format(*m["intervals_95"][k]) for k in ("accuracy", "recall")}
    return (f"{name:<28}{m['accuracy']:>9.4f} {ci['accuracy']:<13}{m['recall']:>7.4f} {ci['recall']:<13}"
            f"{false_alarms:>7.3f}{m['roc_auc']:>8.4f}{report['threshold']:>11.4f}{half['accuracy']:>11.4f}"
            f"{half['recall']:>9.4f}{took}")


def card_check(name: str, card: dict, held_out: dict) -> str:
    """Whether the card's own test interval covers the accuracy measured on other photos of the surface."""
    test, other = card["metrics"]["test"], held_out["metrics"]["accuracy"]
    low, high = test["intervals_95"]["accuracy"]
    unit = f"{test['groups']} photos" if test.get("interval_unit") == "group" else "tiles resampled one by one"
    covered = "covers" if low <= other <= high else "misses"
    return (f"{name}: its card says test accuracy {test['accuracy']:.3f} [{low:.3f}, {high:.3f}] on {test['n']} tiles "
            f"({unit}); on the held-out photos {other:.3f}: the interval {covered} it.")


def worst_photos(report: dict, count: int = 5) -> str:
    return "; ".join(f"{r['group']} {r['accuracy']:.2f} ({r['missed']} missed, {r['false_alarms']} false alarms)"
                     for r in report["groups"][:count])


def with_turns(model: str, holdout: str) -> str:
    """What test-time averaging over the 8 flips and turns would buy this model on the held-out tiles: ROC-AUC and
    accuracy at 0.5, each image scored as one whole tile (as the scorer scores a tile-sized image)."""
    import numpy as np

    from cracknet import storage
    from cracknet.data.trees import discover
    from cracknet.images.decoding import decode
    from cracknet.measure.metrics import binary_metrics
    from cracknet.predict.scorer import Scorer

    scorer = Scorer.load(model)
    images = discover(holdout)
    plain, averaged = [], []
    for image in images:
        tile = decode(storage.read_bytes(image.uri), scorer.spec)
        views = np.stack([np.rot90(t, k) for t in (tile, tile[:, ::-1]) for k in range(4)])
        probs = np.clip(scorer.tile_probabilities(np.ascontiguousarray(views)), 1e-6, 1 - 1e-6)
        plain.append(probs[0])
        averaged.append(1 / (1 + np.exp(-np.log(probs / (1 - probs)).mean())))
    labels = np.array([image.label for image in images])
    one, eight = binary_metrics(np.array(plain), labels), binary_metrics(np.array(averaged), labels)
    return (f"one view: AUC {one['roc_auc']:.4f}, accuracy at 0.5 {one['accuracy']:.4f}; 8 flips and turns "
            f"averaged (logits): AUC {eight['roc_auc']:.4f}, accuracy at 0.5 {eight['accuracy']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", help="the crack model to adapt (default: bench/base_model.py's runs/base, "
                                             "else make demo's runs/demo)")
    parser.add_argument("--data", help="the small labelled set of the new surface (default: 40 generated photos)")
    parser.add_argument("--holdout", help="labelled tiles of other photos of that surface (default: 40 others)")
    parser.add_argument("--group-by", default="auto", help="as for cracknet train (default: auto, photo folders)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=0,
                        help="model input side for the adapted and random-init models (default: train's own rule)")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=None, help="as for cracknet train (default: its own rule)")
    parser.add_argument("--finetune-lr", type=float, default=None, help="(default: the base-model recipe's)")
    parser.add_argument("--head-epochs", type=int, default=None, help="(default: the base-model recipe's)")
    parser.add_argument("--skip-random-init", action="store_true", help="only the base model, before and adapted")
    parser.add_argument("--turns", action="store_true", help="also measure test-time flip/turn averaging on the "
                                                             "adapted model")
    args = parser.parse_args()

    base_uri = args.base_model or next((b for b in BASES if os.path.exists(b)), None)
    if base_uri is None:
        sys.exit("No base model: run bench/base_model.py (or make demo) first, or pass --base-model.")
    base = read_card(base_uri)
    with tempfile.TemporaryDirectory() as scratch:
        data, holdout = args.data, args.holdout
        if not data or not holdout:
            data, holdout = os.path.join(scratch, "pavement"), os.path.join(scratch, "pavement-holdout")
            generate_photos(data, photos=40, seed=20)
            generate_photos(holdout, photos=40, seed=21, first=1000)
        before = evaluate(base["folder"], holdout)
        rows, checks = [row("before (base model)", before)], [f"before, the worst held-out photos: "
                                                                f"{worst_photos(before)}"]
        common = dict(data=data, epochs=args.epochs, image_size=args.image_size or None, num_workers=args.num_workers,
                      group_by=args.group_by, batch_size=args.batch_size, overwrite=True)
        recipe = dict(finetune_lr=args.finetune_lr, head_epochs=args.head_epochs)
        runs = {"adapted from the base": TrainConfig(output=os.path.join(scratch, "adapted"),
                                                     base_model=base["folder"], **common, **recipe)}
        if not args.skip_random_init:
            # Same epochs, size, augmentation and best-epoch rule; only the starting weights differ.
            runs["random init, same budget"] = TrainConfig(output=os.path.join(scratch, "scratch"), weights="none",
                                                           augmentation="strong", keep="best", **common)
        sizes = {}
        for name, cfg in runs.items():
            if name.startswith("random") and cfg.image_size is None:  # the adapted model's size, not 224
                cfg = dataclasses.replace(cfg, image_size=sizes["adapted from the base"])
            started = time.monotonic()
            card = run_training(cfg, log=lambda line: print(line, flush=True))
            sizes[name] = card["preprocessing"]["image_size"]
            groups = card["data"]["grouping"]
            print(f"{name}: split {groups.get('by')}, groups {groups.get('groups')}, threshold {card['threshold']:.4f} "
                  f"({card['operating_point'].get('limited_by')}), {card['preprocessing']['image_size']} px",
                  flush=True)
            held_out = evaluate(card["folder"], holdout)
            rows.append(row(name, held_out, time.monotonic() - started))
            checks.append(card_check(name, card, held_out))
            checks.append(f"{name}, the worst held-out photos: {worst_photos(held_out)}")
            if args.turns and name.startswith("adapted"):
                print(f"{name}, held out: {with_turns(card['folder'], holdout)}", flush=True)
        n = before["metrics"]
        photos = len(before["groups"]) or "?"
    print(f"\nHeld-out tiles of the new surface: {holdout if args.holdout else 'generated pavement'} "
          f"({n['n']} tiles of {photos} photos, {n['tp'] + n['fn']} cracks); base model {base['model_id']} "
          f"trained on {base.get('data', {}).get('uri')} at {base['preprocessing']['image_size']} px; "
          f"{args.epochs} epochs at {sizes}, {os.cpu_count()} CPUs.")
    print(f"{'':<28}{'accuracy':>9} {'(photos)':<13}{'recall':>7} {'(photos)':<13}{'f.alarm':>7}{'AUC':>8}"
          f"{'threshold':>11}{'acc @0.5':>11}{'rec @0.5':>9}{'train':>9}")
    print("\n".join(rows))
    print("\n".join(checks))


if __name__ == "__main__":
    main()
