"""Robustness to how survey imagery differs: standard against strong augmentation, on degraded test images.

    .venv/bin/python bench/robustness.py                       # trains both on the dev set, 3 epochs at 64 px
    .venv/bin/python bench/robustness.py --models runs/a runs/b    # or compare models already trained

Trains two models with the same data, seed, epochs and size — ``--augmentation
standard`` and ``--augmentation strong`` — then scores the test split of their
training run (by content hash) as it is and as degraded copies written as JPEG
files: Gaussian blur, a lower-resolution camera (down to a quarter, back up),
JPEG quality 30, grey, sensor noise, and a warm colour cast. Prints accuracy and
recall at each model's threshold for every condition.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cracknet import storage  # noqa: E402
from cracknet.data.splits import split_of  # noqa: E402
from cracknet.data.trees import discover  # noqa: E402
from cracknet.model.card import read_card  # noqa: E402
from cracknet.predict.evaluate import evaluate  # noqa: E402
from cracknet.storage import content_hash  # noqa: E402
from cracknet.train.config import TrainConfig  # noqa: E402
from cracknet.train.driver import run_training  # noqa: E402

DEV_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "metu-dev"


def _noise(img: Image.Image) -> Image.Image:
    rng = np.random.default_rng(0)
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 12, size=(img.height, img.width, 1))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _cast(img: Image.Image) -> Image.Image:
    arr = np.asarray(img, dtype=np.float32) * np.array([1.12, 1.0, 0.85])
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


CONDITIONS = {
    "clean": (lambda img: img, 92),
    "blur (sigma 3 px)": (lambda img: img.filter(ImageFilter.GaussianBlur(3)), 92),
    "low resolution (1/4)": (lambda img: img.resize((img.width // 4, img.height // 4), Image.BILINEAR)
                             .resize(img.size, Image.BILINEAR), 92),
    "JPEG quality 30": (lambda img: img, 30),
    "grey": (lambda img: img.convert("L").convert("RGB"), 92),
    "noise (sigma 12)": (_noise, 92),
    "colour cast": (_cast, 92),
}


def degraded_copies(card: dict, root: Path) -> dict[str, str]:
    """The model's test split written once per condition as labelled trees; returns condition -> folder."""
    training = card["training"]
    tests = []
    for image in discover(card["data"]["uri"]):
        raw = storage.read_bytes(image.uri)
        if split_of(content_hash(raw), training["val_fraction"], training["test_fraction"]) == "test":
            tests.append((image, Image.open(io.BytesIO(raw)).convert("RGB")))
    trees = {}
    for name, (change, quality) in CONDITIONS.items():
        folder = root / name.split(" ")[0].replace("(", "")
        for image, picture in tests:
            label = "crack" if image.label else "no_crack"
            path = folder / label / Path(image.uri).name
            path.parent.mkdir(parents=True, exist_ok=True)
            change(picture).save(path, format="JPEG", quality=quality)
        trees[name] = str(folder)
    return trees


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEV_DATA))
    parser.add_argument("--models", nargs=2, metavar=("STANDARD", "STRONG"), help="compare these instead of training")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        models = args.models
        if not models:
            models = []
            for augmentation in ("standard", "strong"):
                cfg = TrainConfig(data=args.data, output=os.path.join(scratch, augmentation), epochs=args.epochs,
                                  image_size=args.image_size, batch_size=32, num_workers=2, weights="none",
                                  augmentation=augmentation, overwrite=True)
                models.append(run_training(cfg, log=lambda line: print(line, flush=True))["folder"])
        cards = [read_card(m) for m in models]
        trees = degraded_copies(cards[0], Path(scratch) / "degraded")
        results = {name: [evaluate(m, tree)["metrics"] for m in models] for name, tree in trees.items()}
    n = results["clean"][0]
    print(f"\nTest split of {cards[0]['data']['uri']} ({n['n']} images, {n['tp'] + n['fn']} cracks), "
          f"degraded; models at {cards[0]['preprocessing']['image_size']} px, each at its own threshold "
          f"(standard {cards[0]['threshold']:.3f}, strong {cards[1]['threshold']:.3f}):")
    print(f"{'condition':<24}{'standard: accuracy':>20}{'recall':>8}{'strong: accuracy':>19}{'recall':>8}")
    for name, (standard, strong) in results.items():
        print(f"{name:<24}{standard['accuracy']:>20.4f}{standard['recall']:>8.4f}{strong['accuracy']:>19.4f}"
              f"{strong['recall']:>8.4f}")


if __name__ == "__main__":
    main()
