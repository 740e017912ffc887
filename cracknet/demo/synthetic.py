"""A generated crack / no-crack image set, for demos and tests where no real data is at hand.

    python -m cracknet.demo.synthetic runs/synthetic --per-class 200 --size 96
    python -m cracknet.demo.synthetic runs/asphalt --surface asphalt --per-class 150

    python -m cracknet.demo.synthetic runs/pavement --surface pavement --photos 60
    python -m cracknet.demo.synthetic runs/masks --masks --surface concrete --photos 24 --size 256
    python -m cracknet.demo.synthetic runs/road --masks --road --photos 40 --size 480

Two tile surfaces. ``concrete``: grey, noisy, with blotches and pores; a crack is a
dark, jagged random walk of varying width across the patch. ``asphalt``, a
visibly different surface for adaptation tests and demos: dark, coarse
aggregate of light and dark stones, oil stains and tyre marks (dark streaks
that are not cracks); a crack is a thin, dark, branching line that crosses the tile.

And ``pavement``, the hard one, for developing adaptation: whole photos of a
concrete pavement cut into tiles (``<label>/<photo>/<photo>_x<col>_y<row>.jpg``,
so that splits must keep a photo together). Each photo has its own light,
colour and sharpness; low contrast; hair-thin cracks (1-2 px) a little darker
than the surface; and look-alikes that are not cracks: sawn joints (straight,
dark), tyre marks, hard-edged shadows, stains, dark aggregate. A tile's label
comes from the exact crack mask: crack where the crack runs at least a third of
the tile side through it, no_crack where no crack pixel falls in it, left out in
between.

And mask trees (``--masks``): concrete or asphalt photos with ``images/`` and
``masks/`` side by side and the truth of every crack in ``cracks.json``: each
crack is drawn at one known width (2-10 px) along a known centre line, its mask
exactly the pixels within half that width of the line (so its length, tip to
tip, is the line's plus one width), and cracks never touch. ``--road`` makes
the kind of mask tree users bring: every photo cracked, cracks 1-5 px wide on
480 x 320 asphalt photos, masks drawn up to 2 px off and a pixel too wide or
narrow (``cracks.json`` keeps the exact truth).

Generation is deterministic for a given seed; the JPEGs are real files, decoded
like any other.
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
PHOTO_SURFACES = ("pavement",)


def _soft(rng: np.random.Generator, shape: tuple[int, int], cells: int, scale: float) -> np.ndarray:
    coarse = rng.normal(0, scale, size=(cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize(shape[::-1], Image.BICUBIC))


def pavement_photo(rng: np.random.Generator, width: int, height: int) -> tuple[Image.Image, np.ndarray]:
    """One photo of concrete pavement with 0-2 hair-thin cracks and crack look-alikes; (photo, crack mask)."""
    base = rng.uniform(95, 175)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    light = rng.uniform(-25, 25) * ((xx / width - .5) * math.cos(angle) + (yy / height - .5) * math.sin(angle))
    grey = base + light + _soft(rng, (height, width), 12, 9) + rng.normal(0, rng.uniform(5, 12), (height, width))
    img = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8), mode="L")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(width * height // 900, width * height // 300))):  # aggregate, dark and light
        x, y, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.5, 2.5)
        shade = int(np.clip(base * rng.choice([rng.uniform(0.55, 0.8), rng.uniform(1.1, 1.3)]), 0, 255))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=shade)
    if rng.random() < 0.5:  # a sawn joint: straight, dark, across the photo (not a crack)
        vertical = rng.random() < 0.5
        at = rng.uniform(0.2, 0.8) * (width if vertical else height)
        ends = [(at, 0), (at + rng.uniform(-4, 4), height)] if vertical else [(0, at), (width, at + rng.uniform(-4, 4))]
        draw.line(ends, fill=int(base * rng.uniform(0.45, 0.7)), width=int(rng.integers(2, 5)))
    for _ in range(int(rng.integers(0, 3))):  # stains: soft dark blotches
        x, y, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(8, 30)
        stain = Image.new("L", img.size, 0)
        ImageDraw.Draw(stain).ellipse([x - r, y - r * 0.6, x + r, y + r * 0.6], fill=int(rng.uniform(60, 140)))
        img = Image.composite(Image.new("L", img.size, int(base * 0.7)), img, stain.filter(ImageFilter.GaussianBlur(r / 3)))
    if rng.random() < 0.4:  # a tyre mark: wide, soft, slightly curved
        y0, y1 = rng.uniform(0, height, 2)
        mark = Image.new("L", img.size, 0)
        ImageDraw.Draw(mark).line([(0, y0), (width / 2, (y0 + y1) / 2 + rng.uniform(-20, 20)), (width, y1)],
                                  fill=110, width=int(rng.integers(14, 30)), joint="curve")
        img = Image.composite(Image.new("L", img.size, int(base * 0.6)), img, mark.filter(ImageFilter.GaussianBlur(6)))
    mask = Image.new("L", img.size, 0)
    draw, marks = ImageDraw.Draw(img), ImageDraw.Draw(mask)
    for _ in range(int(rng.choice([0, 1, 1, 2]))):
        darker = int(base * rng.uniform(0.55, 0.8))  # low contrast
        x, y = (rng.uniform(0.1, 0.9) * width, 0.0) if rng.random() < 0.5 else (0.0, rng.uniform(0.1, 0.9) * height)
        heading = math.atan2(height / 2 - y, width / 2 - x) + rng.uniform(-0.5, 0.5)
        points = [(x, y)]
        while 0 <= x <= width and 0 <= y <= height and len(points) < 2000:
            heading += rng.normal(0, 0.06)
            jag = rng.normal(0, 0.4)
            x, y = x + 3 * math.cos(heading + jag), y + 3 * math.sin(heading + jag)
            points.append((x, y))
        wide = int(rng.choice([1, 1, 2]))  # hair-thin
        draw.line(points, fill=darker, width=wide, joint="curve")
        marks.line(points, fill=255, width=wide, joint="curve")
    if rng.random() < 0.4:  # a hard-edged shadow (a pole, a railing) over part of the photo
        shadow = Image.new("L", img.size, 0)
        x0 = rng.uniform(0, width)
        ImageDraw.Draw(shadow).polygon([(x0, 0), (x0 + rng.uniform(15, 40), 0),
                                        (x0 + rng.uniform(-60, 60), height), (x0 + rng.uniform(-90, 30), height)],
                                       fill=int(rng.uniform(90, 160)))
        img = Image.composite(Image.new("L", img.size, int(base * 0.45)), img, shadow.filter(ImageFilter.GaussianBlur(1)))
    tint = rng.uniform(0.92, 1.08, 3)
    rgb = np.clip(np.asarray(img, dtype=np.float32)[..., None] * tint, 0, 255).astype(np.uint8)
    photo = Image.fromarray(rgb, mode="RGB").filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))
    return photo, np.asarray(mask) > 0


def tile_label(mask: np.ndarray, tile: int) -> int | None:
    """1 where the crack mask holds at least a third of the tile side in pixels (a 1 px crack that long), 0 where
    no crack pixel falls in the tile, None in between (too little crack to call: left out)."""
    crack_pixels = int(mask.sum())
    if crack_pixels == 0:
        return 0
    return 1 if crack_pixels >= tile / 3 else None


def generate_photos(root: str, photos: int = 40, tile: int = 96, grid: tuple[int, int] = (4, 3), seed: int = 0,
                    first: int = 0) -> list[str]:
    """``photos`` pavement photos of ``grid`` tiles of ``tile`` px each, as ``<label>/<photo>/<tile>.jpg``
    under ``root`` (photo names from ``first``, so that two calls make different photos); returns the URIs."""
    rng = np.random.default_rng(seed)
    written = []
    for p in range(first, first + photos):
        photo, mask = pavement_photo(rng, grid[0] * tile, grid[1] * tile)
        name = f"pave{p:04d}"
        for row in range(grid[1]):
            for col in range(grid[0]):
                box = (col * tile, row * tile, (col + 1) * tile, (row + 1) * tile)
                label = tile_label(mask[box[1]:box[3], box[0]:box[2]], tile)
                if label is None:
                    continue
                folder = "crack" if label else "no_crack"
                uri = storage.join(root, folder, name, f"{name}_x{col}_y{row}.jpg")
                storage.write_bytes(uri, image_bytes(photo.crop(box), quality=int(rng.integers(75, 93))))
                written.append(uri)
    return written


# ---------------------------------------------------------------------------------------------------
# Mask trees: photos with exact crack masks and known widths (for geometry, segmentation and benchmarks)


WIDTHS = (2, 10)        # pixels: the widths a generated masked crack is drawn at, one per crack
CRACK_LENGTHS = (0.4, 1.1)  # of the photo's side


def polyline_mask(points: np.ndarray, width: float, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies closer than width/2 to a polyline ((x, y) points): a crack exactly that wide."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    near = np.full(shape, np.inf, np.float32)
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
        np.minimum(near, np.hypot(xx - x0 - t * dx, yy - y0 - t * dy), out=near)
    return near < width / 2


def crack_path(rng: np.random.Generator, size: int, margin: float) -> np.ndarray:
    """A crack's centre line: a smooth random walk of 8 px steps that stays ``margin`` inside the photo."""
    target = rng.uniform(*CRACK_LENGTHS) * size
    x, y = rng.uniform(0.25, 0.75, size=2) * size
    heading, points = rng.uniform(0, 2 * math.pi), [(x, y)]
    while len(points) * 8 < target:
        heading += rng.normal(0, 0.18)
        x, y = x + 8 * math.cos(heading), y + 8 * math.sin(heading)
        if not (margin <= x <= size - margin and margin <= y <= size - margin):
            break
        points.append((x, y))
    return np.array(points, dtype=np.float32)


def masked_photo(rng: np.random.Generator, size: int, surface: str, cracks: int) -> tuple[Image.Image, np.ndarray,
                                                                                          list[dict]]:
    """A photo of ``surface`` with ``cracks`` cracks that do not touch, each of one known width; returns the
    photo, its exact mask and each crack's truth (width, length and centre line in pixels)."""
    background, _ = SURFACES[surface]
    img = np.asarray(background(rng, size), dtype=np.float32)
    mask, truth = np.zeros((size, size), bool), []
    for _ in range(cracks * 10):  # tries: a crack that would touch another is drawn again elsewhere
        if len(truth) == cracks:
            break
        width = float(rng.integers(WIDTHS[0], WIDTHS[1] + 1))
        points = crack_path(rng, size, margin=width + 2)
        if len(points) < 6:
            continue
        if (polyline_mask(points, width + 8, mask.shape) & mask).any():  # within 4 px of another crack
            continue
        own = polyline_mask(points, width, mask.shape)
        mask |= own
        length = float(np.hypot(*np.diff(points, axis=0).T).sum()) + width  # tip to tip: a round cap at each end
        truth.append({"width_px": width, "length_px": length, "points": points.round(2).tolist()})
        img[own] *= rng.uniform(0.3, 0.55)
    photo = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
    return photo, mask, truth


def generate_masked(root: str, photos: int = 24, size: int = 256, surface: str = "concrete", seed: int = 0) -> list[str]:
    """A mask tree: ``<root>/images/<surface>-NNNN.jpg`` and ``<root>/masks/<surface>-NNNN.png`` (crack 255,
    background 0), a quarter of the photos without cracks, the rest with one or two; ``<root>/cracks.json``
    holds each photo's truth (crack widths, lengths, centre lines). Returns the image URIs."""
    rng = np.random.default_rng(seed)
    return write_mask_tree(root, rng, (masked_photo(rng, size, surface, cracks=0 if i % 4 == 3 else 1 + i % 2)
                                       for i in range(photos)), surface)


def write_mask_tree(root: str, rng: np.random.Generator, photos, prefix: str) -> list[str]:
    """Each (photo, mask, truth) as ``images/<prefix>-NNNN.jpg`` and ``masks/<prefix>-NNNN.png`` (crack 255),
    the truths in ``cracks.json``; returns the image URIs."""
    import json

    written, truths = [], {}
    for i, (photo, mask, truth) in enumerate(photos):
        name = f"{prefix}-{i:04d}"
        uri = storage.join(root, "images", f"{name}.jpg")
        storage.write_bytes(uri, image_bytes(photo, quality=int(rng.integers(85, 96))))
        buffer = io.BytesIO()
        Image.fromarray(mask.astype(np.uint8) * 255).save(buffer, format="PNG")
        storage.write_bytes(storage.join(root, "masks", f"{name}.png"), buffer.getvalue())
        truths[name] = truth
        written.append(uri)
    storage.write_bytes(storage.join(root, "cracks.json"), json.dumps(truths).encode())
    return written


ROAD_WIDTHS = (1, 5)  # pixels: hairline to wide, as on 0.3-0.5 MP photos of roads and bridge decks
LABEL_OFFSET = 2      # pixels: how far a hand-drawn mask strays from the crack


def road_photo(rng: np.random.Generator, width: int, height: int) -> tuple[Image.Image, np.ndarray, np.ndarray,
                                                                          list[dict]]:
    """An asphalt photo of ``width`` x ``height`` with 1-3 thin cracks (1-5 px): the photo, its exact mask, the
    mask as a person would draw it (shifted by up to ``LABEL_OFFSET`` px, a pixel wider or narrower), and each
    crack's truth."""
    side = min(width, height)
    img = np.asarray(asphalt(rng, max(width, height)), dtype=np.float32)[:height, :width]
    exact, drawn, truth = np.zeros((height, width), bool), np.zeros((height, width), bool), []
    for _ in range(40):
        if len(truth) == 1 + int(rng.integers(0, 3)) or len(truth) == 3:
            break
        crack_width = float(rng.integers(ROAD_WIDTHS[0], ROAD_WIDTHS[1] + 1))
        points = crack_path(rng, side, margin=crack_width + 2) + [rng.uniform(0, width - side), 0]
        if len(points) < 6 or (polyline_mask(points, crack_width + 8, exact.shape) & exact).any():
            continue
        own = polyline_mask(points, crack_width, exact.shape)
        exact |= own
        shift = rng.integers(-LABEL_OFFSET, LABEL_OFFSET + 1, size=2)
        drawn |= polyline_mask(points + shift, max(1.0, crack_width + rng.integers(-1, 2)), exact.shape)
        length = float(np.hypot(*np.diff(points, axis=0).T).sum()) + crack_width
        truth.append({"width_px": crack_width, "length_px": length, "points": points.round(2).tolist()})
        img[own] *= rng.uniform(0.25, 0.5)
    photo = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.5))
    return photo, exact, drawn, truth


def generate_road_masks(root: str, photos: int = 40, width: int = 480, seed: int = 0) -> list[str]:
    """A mask tree like the public road-crack sets (CrackForest, CRACK500): every photo cracked, cracks 1-5 px
    wide, photos ``width`` x 2/3 of it (480 x 320 by default), and masks drawn a few pixels off, as people draw
    them. ``cracks.json`` holds the exact truth (widths, lengths, centre lines). Returns the image URIs."""
    rng = np.random.default_rng(seed)
    drawn = (road_photo(rng, width, width * 2 // 3) for _ in range(photos))
    return write_mask_tree(root, rng, ((photo, mask, truth) for photo, _, mask, truth in drawn), "road")


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
    parser.add_argument("--surface", choices=sorted([*SURFACES, *PHOTO_SURFACES]), default="concrete")
    parser.add_argument("--photos", type=int, default=40, help="pavement: photos, each cut into 4 x 3 tiles; "
                                                                   "--masks: photos")
    parser.add_argument("--masks", action="store_true", help="a mask tree: images/, masks/ and cracks.json "
                                                             "(concrete or asphalt photos of --size px)")
    parser.add_argument("--road", action="store_true", help="with --masks: like the public road-crack sets, every "
                                                            "photo cracked, cracks 1-5 px, photos --size x 2/3 "
                                                            "of it, masks drawn a few px off")
    args = parser.parse_args(argv)
    if args.masks and args.surface not in SURFACES:
        parser.error(f"--masks draws on {' or '.join(SURFACES)}, not {args.surface}.")
    if args.masks and args.road:
        written = generate_road_masks(args.root, args.photos, args.size, args.seed)
    elif args.masks:
        written = generate_masked(args.root, args.photos, args.size, args.surface, args.seed)
    elif args.surface == "pavement":
        written = generate_photos(args.root, args.photos, args.size, seed=args.seed)
    else:
        written = generate(args.root, args.per_class, args.size, args.seed, args.surface)
    print(f"Wrote {len(written)} {'road' if args.masks and args.road else args.surface} images under {args.root}.")


if __name__ == "__main__":
    main()
