"""Crack masks learnt by ``cracknet train``: pixel F1, IoU, width and length errors on held-out photos, the
image verdicts beside them, and what geometry costs a night of scoring.

    .venv/bin/python bench/masks.py                                    # generated concrete photos with masks
    .venv/bin/python bench/masks.py --road --image-size 96             # generated road photos: all cracked, 1-5 px
    .venv/bin/python bench/masks.py --data MASK_TREE --holdout OTHER_MASK_TREE [--base-model runs/base]

Any mask tree (``<root>/images/…`` with ``<root>/masks/…``) works for both. The
model trains on ``--data`` (adapting ``--base-model`` when given), and is judged
on ``--holdout``, photos it never saw, as the nightly job draws its masks
(decoded on the tiles its crack head calls crack, stitched, cut at the mask
threshold chosen on validation):

- pixels: precision, recall and F1 within 2 px (with a 95% interval that resamples whole photos), IoU, and the
  best fixed threshold's F1 (ODS); the photos with the lowest F1, one row each;
- geometry: each true crack (measured on the true mask with ``cracknet.measure.geometry``) is matched to the drawn
  crack nearest the middle of its centre line; width error (mean width, px) and length error (%) of the
  matched ones, and the share found;
- verdicts: accuracy and recall of the crack head at its threshold (and the base model's, when adapting);
- cost: one model actor's work on a survey where 10% of the photos show a crack, scored with geometry
  (decoder on gated tiles, stitching, measuring) and without it, in one run on this machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cracknet import storage  # noqa: E402
from cracknet.data.loading import load_mask  # noqa: E402
from cracknet.data.trees import discover  # noqa: E402
from cracknet.demo.synthetic import generate_masked, generate_road_masks, image_bytes, masked_photo  # noqa: E402
from cracknet.measure.geometry import match_cracks, measure  # noqa: E402
from cracknet.measure.metrics import mask_metrics  # noqa: E402
from cracknet.predict.evaluate import evaluate  # noqa: E402
from cracknet.predict.scorer import Scorer, read_image  # noqa: E402
from cracknet.predict.stitching import photo_probabilities  # noqa: E402
from cracknet.train.config import TrainConfig  # noqa: E402
from cracknet.train.driver import run_training  # noqa: E402

WIDTH_BANDS = (0.0, 2.5, 4.5, 7.5)  # px: true mean widths grouped for the width errors


def drawn_masks(scorer: Scorer, root: str, uris: list | None = None):
    """(true mask, drawn mask, probability map) of every masked photo of a tree, drawn as the nightly job draws
    them; each photo's URI is appended to ``uris`` when given."""
    for image in discover(root, require_both_classes=False):
        if not image.mask:
            continue
        found = read_image(image.uri, scorer.spec, scorer.tiling)
        if found.error:
            continue
        truth = load_mask(image.mask, (found.width, found.height), scorer.spec.max_pixels)
        _, _, maps = scorer.score_masks([found.tiles], scorer.threshold)
        probs = photo_probabilities(maps[0], found.boxes, found.width, found.height)
        if uris is not None:
            uris.append(image.uri)
        yield truth, probs >= scorer.card["mask"]["threshold"], probs


def photo_rows(pairs, uris: list[str]) -> list[tuple[str, float, int]]:
    """(photo, F1 within 2 px of its drawn mask, its true crack pixels), the lowest F1 first."""
    rows = [(uri, mask_metrics([(drawn.astype(np.float32), truth)])["f1"], int(truth.sum()))
            for uri, (truth, drawn, _) in zip(uris, pairs)]
    return sorted(rows, key=lambda r: r[1])


def geometry_errors(pairs, width_threshold: float | None = None) -> dict:
    """True cracks matched to drawn ones (``geometry.match_cracks``): width and length errors of the matched, by
    true width too, and the share found. Widths are read from the stricter ``width_threshold`` cut of the maps
    where one is given (as scoring reads them with the model's own), else from the drawn masks."""
    widths, lengths, found, total = [], [], 0, 0
    bands = [[] for _ in WIDTH_BANDS]
    for truth, drawn, probs in pairs:
        strict = probs >= width_threshold if width_threshold is not None else None
        true_cracks = measure(truth)
        total += len(true_cracks)
        for crack, best in match_cracks(true_cracks, measure(drawn, width_mask=strict)):
            found += 1
            widths.append(best["width_mean_px"] - crack["width_mean_px"])
            bands[min(len(WIDTH_BANDS) - 1, sum(crack["width_mean_px"] >= b for b in WIDTH_BANDS[1:]))].append(
                widths[-1])
            lengths.append(100.0 * (best["length_px"] / crack["length_px"] - 1.0))
    return {"cracks": total, "found": found,
            "width_error_px": float(np.median(widths)) if widths else float("nan"),
            "width_abs_error_px": float(np.median(np.abs(widths))) if widths else float("nan"),
            "length_error_pct": float(np.median(lengths)) if lengths else float("nan"),
            "length_abs_error_pct": float(np.median(np.abs(lengths))) if lengths else float("nan"),
            "by_width": {f"{low:g}+ px": (len(band), float(np.median(band)) if band else float("nan"))
                         for low, band in zip(WIDTH_BANDS, bands)}}


def survey(folder: str, photos: int, size: int, cracked_share: float = 0.1, seed: int = 7) -> list[str]:
    """Photos of generated concrete, ``cracked_share`` of them with one crack."""
    rng = np.random.default_rng(seed)
    uris = []
    for i in range(photos):
        photo, _, _ = masked_photo(rng, size, "concrete", cracks=1 if i % round(1 / cracked_share) == 0 else 0)
        uri = os.path.join(folder, f"survey-{i:04d}.jpg")
        storage.write_bytes(uri, image_bytes(photo))
        uris.append(uri)
    return uris


def night_cost(scorer: Scorer, uris: list[str]) -> tuple[float, float, int]:
    """Seconds to read, tile and score the survey without geometry and with it, as a model actor does (calls of
    ``batch_tiles`` tiles across photos); interleaved, best of two."""
    from cracknet.score.pipeline import Geometry, image_geometry

    geometry = Geometry(scorer.threshold, scorer.card["mask"]["threshold"], scorer.card["mask"].get("width_threshold"),
                        0.2, "insignificant:0.3,moderate:1.25,wide",
                        None, "")
    plain, measured, cracks = [], [], 0
    for _ in range(2):
        started = time.perf_counter()
        found = [read_image(uri, scorer.spec, scorer.tiling) for uri in uris]
        scorer.score([f.tiles for f in found])
        plain.append(time.perf_counter() - started)
        started = time.perf_counter()
        found = [read_image(uri, scorer.spec, scorer.tiling) for uri in uris]
        _, _, maps = scorer.score_masks([f.tiles for f in found], geometry.gate)
        cracks = sum(image_geometry(m, f.boxes, f.width, f.height, f.uri, f.version, geometry)[0] != "[]"
                     for f, m in zip(found, maps))
        measured.append(time.perf_counter() - started)
    return min(plain), min(measured), cracks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="mask tree to train on (default: generated concrete photos)")
    parser.add_argument("--holdout", help="mask tree of other photos to judge on (default: generated, other seed)")
    parser.add_argument("--base-model", help="adapt this model instead of training from --weights")
    parser.add_argument("--model", help="judge this mask model as it is (no training)")
    parser.add_argument("--weights", default="none", help="starting weights without --base-model")
    parser.add_argument("--road", action="store_true", help="generated road photos like the public sets (every "
                                                            "photo cracked, 1-5 px, labels a few px off; "
                                                            "synthetic --road) instead of concrete")
    parser.add_argument("--photos", type=int, default=96, help="generated photos to train on (--road: 40, and 78 "
                                                               "held out)")
    parser.add_argument("--size", type=int, default=192, help="generated photo side (--road: width, default 480)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=0, help="model input side (default: the photos' own)")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--cpus-per-worker", type=float, default=float(os.cpu_count() or 1))
    parser.add_argument("--survey", type=int, default=60, help="photos in the night-cost survey")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="cracknet-masks-")
    data, holdout = args.data, args.holdout
    if args.road and data is None:
        data, holdout = os.path.join(work, "train"), holdout or os.path.join(work, "holdout")
        generate_road_masks(data, photos=40 if args.photos == 96 else args.photos,
                            width=480 if args.size == 192 else args.size, seed=1)
        generate_road_masks(holdout, photos=78, width=480 if args.size == 192 else args.size, seed=2)
    if data is None:
        data = os.path.join(work, "train")
        generate_masked(data, photos=args.photos, size=args.size, seed=1)
    if holdout is None:
        holdout = os.path.join(work, "holdout")
        generate_masked(holdout, photos=max(24, args.photos // 3), size=args.size, seed=2)
    output, started = args.model or os.path.join(work, "run"), time.monotonic()
    if args.model is None:
        # adapting: the base model's rule; a photo larger than that trains and scores in crops of it
        image_size = args.image_size or (None if args.base_model else min(args.size, 224))
        run_training(TrainConfig(data=data, output=output, epochs=args.epochs, image_size=image_size,
                                 num_workers=args.num_workers, cpus_per_worker=args.cpus_per_worker,
                                 weights=args.weights, base_model=args.base_model), log=print)
    trained = time.monotonic() - started
    scorer = Scorer.load(output)
    card = scorer.card
    report = evaluate(output, holdout, scorer=scorer)
    pixels, verdicts = report["masks"], report["metrics"]
    uris: list[str] = []
    pairs = list(drawn_masks(scorer, holdout, uris))
    cut = card["mask"].get("width_threshold")
    errors, plain, rows = geometry_errors(pairs, cut), geometry_errors(pairs), photo_rows(pairs, uris)
    print(f"\n{'Trained in %.0f s on %s' % (trained, data) if args.model is None else output}; mask threshold "
          f"{card['mask']['threshold']:.2f}, widths read at {card['mask'].get('width_threshold')} (validation).")
    print(f"Held out ({holdout}, {pixels['images']} photos):")
    print(f"  pixels within 2 px: precision {pixels['precision']:.3f}, recall {pixels['recall']:.3f}, "
          f"F1 {pixels['f1']:.3f} [{pixels['f1_interval_95'][0]:.3f}, {pixels['f1_interval_95'][1]:.3f}] (95%, "
          f"photos resampled), IoU {pixels['iou']:.3f}; ODS F1 {pixels['ods_f1']:.3f} at "
          f"{pixels['ods_threshold']:.2f}")
    f1s = [f1 for _, f1, _ in rows]
    print(f"  per photo: F1 median {np.median(f1s):.3f}, {sum(f1 == 0 for f1 in f1s)} of {len(f1s)} photos with "
          f"nothing right; the lowest:")
    for uri, f1, pixels_true in rows[:5]:
        print(f"    {uri}: F1 {f1:.3f} ({pixels_true} crack pixels)")
    print(f"  cracks found {errors['found']} of {errors['cracks']}; width error median {errors['width_error_px']:+.2f} "
          f"px (absolute {errors['width_abs_error_px']:.2f} px); length error median "
          f"{errors['length_error_pct']:+.1f}% (absolute {errors['length_abs_error_pct']:.1f}%)")
    print(f"  widths read from the mask cut itself instead of the width cut ({cut}): width error median "
          f"{plain['width_error_px']:+.2f} px (absolute {plain['width_abs_error_px']:.2f} px)")
    for name, figures in ((f"the width cut {cut}", errors), ("the mask cut", plain)):
        print(f"  width error by true width, from {name}: " + ", ".join(
            f"{band}: {n} cracks, {median:+.2f} px" for band, (n, median) in figures["by_width"].items() if n))
    print(f"  verdicts at threshold {report['threshold']:.3f}: accuracy {verdicts['accuracy']:.4f}, recall "
          f"{verdicts['recall']:.4f}, false alarms {verdicts['fp']} of {verdicts['fp'] + verdicts['tn']}")
    if args.base_model:
        base = evaluate(args.base_model, holdout)["metrics"]
        print(f"  the base model's verdicts: accuracy {base['accuracy']:.4f}, recall {base['recall']:.4f}")
    uris = survey(os.path.join(work, "survey"), args.survey, args.size)
    plain, measured, cracked = night_cost(scorer, uris)
    print(f"Night cost, {len(uris)} photos ({cracked} with cracks drawn), one actor: {plain:.1f} s without geometry, "
          f"{measured:.1f} s with it: {measured / plain:.2f}x")


if __name__ == "__main__":
    main()
