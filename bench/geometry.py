"""Crack geometry measured on a mask tree: how close lengths and widths come to the truth, and how fast.

    .venv/bin/python bench/geometry.py                                 # generated concrete and asphalt masks
    .venv/bin/python bench/geometry.py --data MASK_TREE --mm-per-pixel 0.2

A mask tree is ``<root>/masks/…`` (PNG/BMP/JPG, non-zero = crack), the layout
``cracknet train`` reads beside ``<root>/images/…``. Every mask is measured with
``cracknet.measure.geometry.measure``; the benchmark prints cracks found, their lengths,
widths and severities, and the time per megapixel. Where the tree holds the
truth (``cracks.json``, as ``python -m cracknet.demo.synthetic --masks`` writes: each
crack's width and centre line), each true crack is matched to the measured crack
nearest its middle and the errors are printed: width (the crack's mean width,
and the median width along its simplified centre line) in pixels, and length in
percent. This measures the geometry on exact masks; how well a model's masks
do is a separate question.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from cracknet import storage  # noqa: E402
from cracknet.demo.synthetic import generate_masked  # noqa: E402
from cracknet.images.decoding import open_image  # noqa: E402
from cracknet.measure.geometry import DEFAULT_WIDTH_CLASSES, measure, parse_width_classes  # noqa: E402

MASK_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg")


def masks_of(root: str) -> dict[str, np.ndarray]:
    folder = storage.join(root, "masks")
    uris = sorted(u for u in storage.list_files(folder) if u.lower().endswith(MASK_SUFFIXES))
    if not uris:
        raise SystemExit(f"{folder} holds no masks (PNG, BMP or JPG).")
    return {u[len(folder) + 1:].rsplit(".", 1)[0]: np.asarray(open_image(storage.read_bytes(u)).convert("L")) > 127
            for u in uris}


def matched_errors(truth: dict, measured: dict) -> list[dict]:
    """For each true crack, the measured crack nearest the middle of its centre line, and the errors."""
    rows = []
    for name, cracks in truth.items():
        for crack in cracks:
            points = np.array(crack["points"])
            middle = points[len(points) // 2]
            found = measured.get(name, [])
            if not found:
                rows.append({"width": crack["width_px"], "found": False})
                continue
            best = min(found, key=lambda c: min(np.hypot(v["x"] - middle[0], v["y"] - middle[1])
                                                for path in c["paths"] for v in path))
            along = np.median([v["width_px"] for path in best["paths"] for v in path])
            rows.append({"width": crack["width_px"], "found": True,
                         "mean_width_error": best["width_mean_px"] - crack["width_px"],
                         "line_width_error": along - crack["width_px"],
                         "length_error": best["length_px"] / crack["length_px"] - 1})
    return rows


def report(label: str, root: str, mm_per_pixel: float | None, classes) -> None:
    masks = masks_of(root)
    started = time.perf_counter()
    measured = {name: measure(mask, mm_per_pixel, classes) for name, mask in masks.items()}
    seconds = time.perf_counter() - started
    megapixels = sum(m.size for m in masks.values()) / 1e6
    cracks = [c for found in measured.values() for c in found]
    print(f"\n{label}: {len(masks)} masks ({megapixels:.2f} MP), {len(cracks)} cracks measured in {seconds:.2f} s "
          f"({seconds / max(megapixels, 1e-9):.2f} s per MP)")
    if cracks:
        lengths = np.array([c["length_px"] for c in cracks])
        widths = np.array([c["width_mean_px"] for c in cracks])
        print(f"  length px: median {np.median(lengths):.1f}, max {lengths.max():.1f}; "
              f"mean width px: median {np.median(widths):.2f}, max {widths.max():.2f}")
        if mm_per_pixel is not None:
            counts = {c.name: sum(k["severity"] == c.name for k in cracks) for c in classes}
            print(f"  severity at {mm_per_pixel} mm/px: {json.dumps(counts)}")
    truth_uri = storage.join(root, "cracks.json")
    if not storage.exists(truth_uri):
        print("  (no cracks.json: no truth to compare with)")
        return
    rows = matched_errors(json.loads(storage.read_bytes(truth_uri)), measured)
    found = [r for r in rows if r["found"]]
    print(f"  true cracks {len(rows)}, matched {len(found)}; spurious measured cracks "
          f"{max(0, len(cracks) - len(found))}")
    print(f"  {'true width px':>14} {'cracks':>7} {'mean-width err':>15} {'line-width err':>15} {'length err %':>13}")
    for low, high in ((2, 3), (4, 6), (7, 10), (2, 10)):
        part = [r for r in found if low <= r["width"] <= high]
        if not part:
            continue
        med = {k: float(np.median([r[k] for r in part])) for k in ("mean_width_error", "line_width_error",
                                                                    "length_error")}
        worst_length = max(abs(r["length_error"]) for r in part)
        print(f"  {f'{low}-{high}':>14} {len(part):>7} {med['mean_width_error']:>+15.2f} "
              f"{med['line_width_error']:>+15.2f} {100 * med['length_error']:>+7.1f} (max {100 * worst_length:.1f})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", help="a mask tree (repeatable); default: generated ones")
    parser.add_argument("--mm-per-pixel", type=float, default=None)
    parser.add_argument("--width-classes", default=DEFAULT_WIDTH_CLASSES)
    parser.add_argument("--photos", type=int, default=48, help="generated photos per surface")
    parser.add_argument("--size", type=int, default=512, help="generated photo side, px")
    args = parser.parse_args(argv)
    classes = parse_width_classes(args.width_classes)
    if args.data:
        for root in args.data:
            report(root, root, args.mm_per_pixel, classes)
        return
    with tempfile.TemporaryDirectory(prefix="cracknet-geometry-") as folder:
        for seed, surface in enumerate(("concrete", "asphalt")):
            root = os.path.join(folder, surface)
            generate_masked(root, args.photos, args.size, surface, seed=seed)
            report(f"generated {surface}, {args.photos} photos of {args.size} px", root, args.mm_per_pixel, classes)


if __name__ == "__main__":
    main()
