"""A generated crack / no-crack image set, for demos and tests where no real data is at hand.

    python -m cracknet.synthetic runs/synthetic --per-class 200 --size 96
    python -m cracknet.synthetic runs/asphalt --surface asphalt --per-class 150

Two surfaces. ``concrete``: grey, noisy, with blotches and pores; a crack is a
dark, jagged random walk of varying width across the patch. ``asphalt``, a
visibly different surface for adaptation tests and demos: dark, coarse
aggregate of light and dark stones, oil stains and tyre marks (dark streaks
that are not cracks); a crack is a thin, dark, branching line that crosses the tile.
Generation is deterministic for a given seed; the JPEGs are real files,
decoded like any other.
"""

from __future__ import annotations

import argparse
import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from cracknet import storage


def concrete(rng: np.random.Generator, size: int) -> Image.Image:
    base = rng.uniform(110, 190)
    tint = rng.uniform(-8, 8, size=3)
    noise = rng.normal(0, rng.uniform(6, 16), size=(size, size, 1))
    coarse = rng.normal(0, 12, size=(max(2, size // 16), max(2, size // 16)))
    blotches = np.asarray(Image.fromarray(coarse.astype(np.float32), mode="F").resize((size, size), Image.BICUBIC))
    arr = base + tint + noise + blotches[..., None]
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, size // 8 + 1))):  # pores
        x, y, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.5, 1.8)
        shade = int(base * rng.uniform(0.5, 0.8))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(shade, shade, shade))
    return img.filter(ImageFilter.GaussianBlur(0.6))


def draw_crack(img: Image.Image, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Draw one crack; returns its polyline (for tests that need to know where it is)."""
    size = img.size[0]
    x, y = rng.uniform(0, size), 0.0
    if rng.random() < 0.5:
        x, y = 0.0, rng.uniform(0, size)
    heading = math.atan2(size / 2 - y, size / 2 - x) + rng.uniform(-0.6, 0.6)
    points = [(x, y)]
    step = max(2.0, size / 24)
    while 0 <= x <= size and 0 <= y <= size and len(points) < 200:
        heading += rng.normal(0, 0.35)
        x, y = x + step * math.cos(heading), y + step * math.sin(heading)
        points.append((x, y))
    draw = ImageDraw.Draw(img)
    width = max(1, int(round(rng.uniform(0.012, 0.035) * size)))
    shade = int(rng.uniform(15, 60))
    draw.line(points, fill=(shade, shade, shade), width=width, joint="curve")
    return points


def asphalt(rng: np.random.Generator, size: int) -> Image.Image:
    base = rng.uniform(45, 95)
    grain = rng.normal(0, rng.uniform(10, 18), size=(size, size, 1))
    stains = rng.normal(0, 10, size=(max(2, size // 24), max(2, size // 24)))
    stains = np.asarray(Image.fromarray(stains.astype(np.float32), mode="F").resize((size, size), Image.BICUBIC))
    arr = base + rng.uniform(-4, 4, size=3) + grain + stains[..., None]
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(size // 3, size))):  # aggregate: light and dark stones
        x, y, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.6, max(1.0, size / 40))
        shade = int(np.clip(base * rng.choice([rng.uniform(1.4, 2.2), rng.uniform(0.4, 0.7)]), 0, 255))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(shade, shade, shade))
    if rng.random() < 0.4:  # a tyre mark: a wide, soft, straight dark streak
        y0, y1 = rng.uniform(0, size, 2)
        shade = int(base * 0.6)
        mark = Image.new("RGB", img.size, (shade, shade, shade))
        mask = Image.new("L", img.size, 0)
        ImageDraw.Draw(mask).line([(0, y0), (size, y1)], fill=90, width=max(3, size // 8))
        img = Image.composite(mark, img, mask.filter(ImageFilter.GaussianBlur(size / 20)))
    return img.filter(ImageFilter.GaussianBlur(0.5))


def draw_thin_crack(img: Image.Image, rng: np.random.Generator) -> None:
    """A thin dark crack with a branch or two, as on a road surface: it runs across the tile on a
    slowly drifting heading, jagged at the scale of a few pixels."""
    size = img.size[0]
    darker = int(np.asarray(img).mean() * rng.uniform(0.1, 0.3))
    draw = ImageDraw.Draw(img)
    x, y = rng.uniform(0.1, 0.9) * size, 0.0
    if rng.random() < 0.5:
        x, y = 0.0, rng.uniform(0.1, 0.9) * size
    heading = math.atan2(size / 2 - y, size / 2 - x) + rng.uniform(-0.4, 0.4)
    step = max(1.5, size / 32)
    for branch in range(int(rng.integers(1, 3))):
        points = [(x, y)]
        while 0 <= x <= size and 0 <= y <= size and len(points) < 300:
            heading += rng.normal(0, 0.08)  # the course drifts slowly ...
            jag = rng.normal(0, 0.35)       # ... and each step zig-zags about it
            x, y = x + step * math.cos(heading + jag), y + step * math.sin(heading + jag)
            points.append((x, y))
        draw.line(points, fill=(darker, darker, darker), width=max(1, int(round(size / 48))), joint="curve")
        if len(points) > 4:  # the next branch leaves from a point on this one
            x, y = points[int(rng.integers(1, len(points) - 1))]
            heading += rng.choice([-1, 1]) * rng.uniform(0.6, 1.2)


SURFACES = {"concrete": (concrete, draw_crack), "asphalt": (asphalt, draw_thin_crack)}


def image_bytes(img: Image.Image, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def generate(root: str, per_class: int = 200, size: int = 96, seed: int = 0, surface: str = "concrete") -> list[str]:
    """Write ``per_class`` crack and no_crack JPEGs of ``surface`` under ``root``; returns their URIs."""
    background, crack = SURFACES[surface]
    rng = np.random.default_rng(seed)
    written = []
    for i in range(per_class):
        for label in ("crack", "no_crack"):
            img = background(rng, size)
            if label == "crack":
                crack(img, rng)
            uri = storage.join(root, label, f"{label}-{i:05d}.jpg")
            storage.write_bytes(uri, image_bytes(img, quality=int(rng.integers(80, 96))))
            written.append(uri)
    return written


def adaptation_sets(labelled: str, holdout: str, per_class: tuple[int, int] = (150, 200)) -> None:
    """The generated new surface of the adaptation demo and benchmark: ``per_class[0]`` labelled asphalt
    tiles per class to adapt on and ``per_class[1]`` others per class to measure on (227 px, fixed seeds)."""
    generate(labelled, per_class=per_class[0], size=227, seed=10, surface="asphalt")
    generate(holdout, per_class=per_class[1], size=227, seed=11, surface="asphalt")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="folder or s3:// prefix to write crack/ and no_crack/ into")
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--surface", choices=sorted(SURFACES), default="concrete")
    args = parser.parse_args(argv)
    written = generate(args.root, args.per_class, args.size, args.seed, args.surface)
    print(f"Wrote {len(written)} {args.surface} images under {args.root}.")


if __name__ == "__main__":
    main()
