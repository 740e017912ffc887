"""Crack geometry from a crack mask: each connected crack's centre line, length, widths, orientation, extent
and severity, in photo pixels and, where the scale is known, in millimetres.

    cracks = measure(mask)                                   # mask: (H, W) bool, True where crack
    cracks = measure(mask, mm_per_pixel=0.25, classes=parse_width_classes("fine:0.3,medium:1.25,wide"))
    cracks[0]["length_mm"], cracks[0]["width_p95_mm"], cracks[0]["severity"], cracks[0]["paths"]

How each figure is taken:
- a crack is a connected part of the mask (8-connected); parts whose centre line is shorter than
  ``min_length`` pixels are specks, not cracks, and are dropped;
- its centre line is the mask's skeleton (scikit-image), with spurs shorter than the crack's width pruned;
  it is split into paths between ends and junctions, and its length is the length of those paths through the
  pixel centres, each free end extended in its own direction to the crack's tip (a skeleton stops half
  the width short of a blunt end, and runs most of the way into a tapered or round one);
- the width at a centre-line pixel is twice its Euclidean distance to the nearest background pixel
  (centre to centre): on straight bars 2-10 px wide at any angle its median is within 0.2 px of the true
  width (worst 1.5 px); a crack one pixel wide reads 2 px, the resolution's limit. ``width_mean`` is the
  crack's area over its length (every mask pixel counts, not only the centre line; within 0.1 px on those
  bars). The distance is quantised to the pixel grid and the area is not, so the widths along the centre
  line are scaled (by at most a third) to have the area's median; ``width_max`` and ``width_p95`` come
  from them;
- orientation relative to the photo's axes, from the principal direction of the centre line: ``transverse``
  within 30 degrees of the horizontal (x) axis, ``longitudinal`` within 30 degrees of the vertical (y) axis
  (the direction of travel of a road camera), ``diagonal`` between, and ``map`` (pattern cracking) where a
  crack has at least ``MAP_JUNCTIONS`` junctions and no dominant direction;
- severity: the class of the crack's 95th-percentile width in millimetres; null without a scale.
The default classes are the AASHTO Manual for Bridge Element Inspection's crack widths for reinforced
concrete (defect 1130): insignificant below 0.3 mm (0.012 in), moderate to 1.25 mm (0.05 in), wide beyond.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from cracknet.errors import CracknetError

MIN_LENGTH = 8.0       # pixels: a shorter centre line is a speck, not a crack
SIMPLIFY = 1.0         # pixels: how far a simplified path may stray from the centre line
MAP_JUNCTIONS = 4      # junctions from which a crack with no dominant direction is pattern (map) cracking
DIAGONAL_FROM, DIAGONAL_TO = 30.0, 60.0  # degrees from the horizontal axis
CALIBRATION = (0.75, 1.33)  # how far the area may rescale the distance-transform widths
WIDTH_CUT_CALIBRATION = (0.2, 1.33)  # with a stricter cut for widths: a soft edge cut wide may shrink further
MATCH_PX = 10.0  # a drawn crack further than this from a true crack's middle did not find it
ORIENTATIONS = ("transverse", "longitudinal", "diagonal", "map")


@dataclass(frozen=True)
class WidthClass:
    name: str
    below_mm: float | None  # None: the last class, everything wider


AASHTO_RC = (WidthClass("insignificant", 0.3), WidthClass("moderate", 1.25), WidthClass("wide", None))
DEFAULT_WIDTH_CLASSES = "insignificant:0.3,moderate:1.25,wide"


@functools.lru_cache(maxsize=16)  # the nightly job asks once per photo; the answer is immutable
def parse_width_classes(text: str) -> tuple[WidthClass, ...]:
    """``name:below_mm,...,name`` (upper bounds increasing, the last class open) as width classes."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    classes, last = [], 0.0
    for i, part in enumerate(parts):
        name, _, bound = part.partition(":")
        if not name.strip().replace("_", "").replace("-", "").isalnum():
            raise CracknetError(f"--width-classes {text!r}: {name!r} is not a class name (letters, digits, - or _).")
        if i == len(parts) - 1:
            if bound:
                raise CracknetError(f"--width-classes {text!r}: the last class ({name}) takes every wider crack, "
                                    "so it has no upper bound; end with a name alone.")
            classes.append(WidthClass(name.strip(), None))
            break
        try:
            below = float(bound)
        except ValueError:
            raise CracknetError(f"--width-classes {text!r}: {part!r} needs an upper bound in millimetres, "
                                "as in moderate:1.25.") from None
        if not below > last:
            raise CracknetError(f"--width-classes {text!r}: the bounds must increase and be above 0 mm.")
        classes.append(WidthClass(name.strip(), below))
        last = below
    if len(classes) < 2:
        raise CracknetError(f"--width-classes {text!r}: give at least two classes, as in {DEFAULT_WIDTH_CLASSES}.")
    return tuple(classes)


def severity_of(width_mm: float | None, classes: tuple[WidthClass, ...]) -> str | None:
    if width_mm is None:
        return None
    return next(c.name for c in classes if c.below_mm is None or width_mm < c.below_mm)


def worst(severities: list[str | None], classes: tuple[WidthClass, ...]) -> str | None:
    """The most severe of some cracks' classes (None when none has one)."""
    rank = {c.name: i for i, c in enumerate(classes)}
    known = [s for s in severities if s is not None]
    return max(known, key=rank.__getitem__) if known else None


# ---------------------------------------------------------------------------------------------------
# Measuring


def measure(mask: np.ndarray, mm_per_pixel: float | None = None, classes: tuple[WidthClass, ...] = AASHTO_RC,
            min_length: float = MIN_LENGTH, width_mask: np.ndarray | None = None) -> list[dict]:
    """The cracks of a photo's mask, longest first (see the module docstring for each figure).

    With ``width_mask`` (a stricter cut of the probability map the mask was cut from), a crack's widths come from
    that cut's pixels within it: the cut that finds a crack whole (its length, its course) draws a thin crack's
    soft edge wide, and a stricter one draws it at its width (``choose_width_threshold``)."""
    from scipy import ndimage
    from skimage.measure import label
    from skimage.morphology import skeletonize

    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise CracknetError(f"A crack mask has two dimensions (height, width), not {mask.ndim}.")
    if mm_per_pixel is not None and not (math.isfinite(mm_per_pixel) and mm_per_pixel > 0):
        raise CracknetError(f"The scale must be a positive number of millimetres per pixel, not {mm_per_pixel}.")
    if not mask.any():
        return []
    # Padded by repeating the edge: a crack that leaves the photo is not narrower at its edge.
    edt = ndimage.distance_transform_edt(np.pad(mask, 1, mode="edge"))[1:-1, 1:-1]
    skeleton = skeletonize(mask)
    labels, count = label(mask, connectivity=2, return_num=True)
    boxes = ndimage.find_objects(labels)
    cracks = []
    for index, box in enumerate(boxes, start=1):
        if box is None:
            continue
        own = labels[box] == index
        area = None if width_mask is None else int((np.asarray(width_mask, dtype=bool)[box] & own).sum())
        crack = _one_crack(own, skeleton[box] & own, edt[box] * own, (box[1].start, box[0].start), min_length,
                           area)
        if crack is not None:
            cracks.append(_in_units(crack, mm_per_pixel, classes))
    cracks.sort(key=lambda c: -c["length_px"])
    return cracks


def _width(edt: np.ndarray) -> np.ndarray:
    """Width at centre-line pixels from their distance to the nearest background pixel centre."""
    return 2.0 * edt


def _one_crack(own: np.ndarray, skeleton: np.ndarray, edt: np.ndarray, origin: tuple[int, int],
               min_length: float, width_area: int | None = None) -> dict | None:
    paths, junctions = trace(skeleton)
    paths, junctions = _pruned(paths, junctions, edt, skeleton)
    if not paths:
        return None
    ends = set(_free_ends(paths, junctions))
    lines = [_simplified(p, edt, *origin) for p in paths]
    length = sum(line_length(line) for line in lines)
    for path in paths:  # free ends: on to the crack's tip
        if path[-1] in ends:
            length += _beyond(own, path)
        if path[0] in ends:
            length += _beyond(own, path[::-1])
    if length < min_length:
        return None
    centre = np.array([pt for p in paths for pt in p], dtype=float)
    widths = _width(np.array([edt[y, x] for y, x in centre.astype(int)]))
    x0, y0 = origin
    area = int(own.sum())
    # The distance transform is quantised to the grid at most angles; the area is not: scale the profile so
    # that its median is the crack's area over its length (bounded, for short or blotchy cracks).
    wide = (area if width_area is None else width_area) / max(length, 1.0)
    bounds = CALIBRATION if width_area is None else WIDTH_CUT_CALIBRATION
    factor = float(np.clip(wide / max(np.median(widths), 1e-9), *bounds))
    widths = widths * factor
    for line in lines:
        for vertex in line:
            vertex["width_px"] *= factor
    return {
        "length_px": float(length),
        "width_mean_px": float(wide),
        "width_max_px": float(widths.max()),
        "width_p95_px": float(np.percentile(widths, 95)),
        "orientation": orientation(centre, len(junctions)),
        "junctions": len(junctions),
        "area_px": area,
        "bbox": {"x": int(x0), "y": int(y0), "w": int(own.shape[1]), "h": int(own.shape[0])},
        "paths": lines,
    }


def match_cracks(true_cracks: list[dict], drawn_cracks: list[dict], within: float = MATCH_PX) -> list[tuple]:
    """(true crack, drawn crack) for each true crack with a drawn one within ``within`` px of the middle of its
    longest centre-line path (the nearest such)."""
    pairs = []
    for crack in true_cracks:
        path = max(crack["paths"], key=len)
        middle = path[len(path) // 2]
        near = [(min(math.hypot(v["x"] - middle["x"], v["y"] - middle["y"]) for p in c["paths"] for v in p), n)
                for n, c in enumerate(drawn_cracks)]
        if near:
            distance, best = min(near)
            if distance <= within:
                pairs.append((crack, drawn_cracks[best]))
    return pairs


WIDTH_CUTS = tuple(np.round(np.arange(0.5, 0.99, 0.025), 3))  # candidate stricter cuts for widths


def choose_width_threshold(pairs, threshold: float) -> dict:
    """The cut of the probability maps whose crack widths best match the true masks' (median error nearest 0),
    among ``threshold`` itself and the stricter ``WIDTH_CUTS``; ``pairs`` are (probability map, true mask) of
    validation photos. Returns the cut, the matched cracks and the median width error (px) at it and at
    ``threshold``."""
    truths = [measure(truth) for _, truth in pairs]
    errors = {}
    for cut in [threshold, *(c for c in WIDTH_CUTS if c > threshold)]:
        found = []
        for (probs, _), true_cracks in zip(pairs, truths):
            drawn = measure(probs >= threshold, width_mask=probs >= cut) if true_cracks else []
            found += [d["width_mean_px"] - t["width_mean_px"] for t, d in match_cracks(true_cracks, drawn)]
        if not found:
            break
        errors[cut] = float(np.median(found)), len(found)
    if not errors:
        return {"width_threshold": threshold, "cracks": 0}
    cut = min(errors, key=lambda c: (abs(errors[c][0]), c))
    return {"width_threshold": float(cut), "cracks": errors[cut][1], "width_error_px": errors[cut][0],
            "width_error_px_at_mask_threshold": errors[threshold][0]}


def _in_units(crack: dict, mm_per_pixel: float | None, classes: tuple[WidthClass, ...]) -> dict:
    mm = {f"{k[:-3]}_mm": (crack[k] * mm_per_pixel if mm_per_pixel is not None else None)
          for k in ("length_px", "width_mean_px", "width_max_px", "width_p95_px")}
    return {**crack, **mm, "severity": severity_of(mm["width_p95_mm"], classes)}


# ---------------------------------------------------------------------------------------------------
# The centre line as paths


OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def _neighbours(pixels: set) -> dict:
    """Each skeleton pixel's neighbours, without a diagonal step where an orthogonal pair of steps joins the
    same two pixels through a third (the corner of a staircase would otherwise count as a junction)."""
    out = {}
    for y, x in pixels:
        near = [(y + dy, x + dx) for dy, dx in OFFSETS if (y + dy, x + dx) in pixels]
        out[(y, x)] = [(ny, nx) for ny, nx in near
                       if ny == y or nx == x or ((ny, x) not in pixels and (y, nx) not in pixels)]
    return out


def trace(skeleton: np.ndarray) -> tuple[list[list[tuple[int, int]]], set]:
    """A skeleton as paths (lists of (y, x) pixels) between ends and junctions, each step walked once; closed
    loops without a junction are one path. Returns the paths and the junction pixels."""
    pixels = set(zip(*np.nonzero(skeleton)))
    graph = _neighbours(pixels)
    junctions = {p for p, near in graph.items() if len(near) >= 3}
    nodes = {p for p, near in graph.items() if len(near) != 2}
    walked: set = set()
    paths = []

    def walk(start, step):
        path, previous, here = [start], start, step
        walked.add(frozenset((start, step)))
        while True:
            path.append(here)
            if here in nodes:
                return path
            following = [n for n in graph[here] if n != previous and frozenset((here, n)) not in walked]
            if not following:
                return path
            previous, here = here, following[0]
            walked.add(frozenset((previous, here)))

    for node in sorted(nodes):
        if not graph[node]:
            paths.append([node])  # a single pixel
        for step in graph[node]:
            if frozenset((node, step)) not in walked:
                paths.append(walk(node, step))
    for pixel in sorted(pixels):  # loops: no end or junction on them
        for step in graph[pixel]:
            if frozenset((pixel, step)) not in walked:
                paths.append(walk(pixel, step))
    return paths, junctions


def _pruned(paths: list, junctions: set, edt: np.ndarray, skeleton: np.ndarray):
    """Drop spurs (a path from a free end to a junction shorter than the crack is wide there) and trace again."""
    spurs = [p for p in paths if len(p) > 1 and (p[0] in junctions) != (p[-1] in junctions)
             and path_length(p) < _width(edt[p[0] if p[0] in junctions else p[-1]])]
    if not spurs:
        return paths, junctions
    kept = skeleton.copy()
    for spur in spurs:
        for y, x in (spur[1:] if spur[0] in junctions else spur[:-1]):
            kept[y, x] = False
    return trace(kept)


def _beyond(own: np.ndarray, path: list) -> float:
    """How far the crack runs on past the last pixel of ``path`` in the direction the path ends in: a skeleton
    stops short of a blunt end by half the crack's width, and reaches most of the way into a tapered one."""
    end = np.array(path[-1], dtype=float)
    back = np.array(path[max(0, len(path) - 6)], dtype=float)
    direction = end - back
    norm = float(np.hypot(*direction))
    if norm == 0:
        return 0.5
    direction /= norm
    step, h, w = 0.0, *own.shape
    while True:
        y, x = np.rint(end + (step + 0.5) * direction).astype(int)
        if not (0 <= y < h and 0 <= x < w) or not own[y, x]:
            return step + 0.5  # to the edge of the last crack pixel
        step += 0.5


def _free_ends(paths: list, junctions: set) -> list:
    counts: dict = {}
    for p in paths:
        for end in (p[0], p[-1]):
            counts[end] = counts.get(end, 0) + 1
    return [p for p, n in counts.items() if n == 1 and p not in junctions] + \
        [p[0] for p in paths if len(p) == 1]  # a single pixel has two free ends


def line_length(line: list[dict]) -> float:
    """The length of a simplified path (Euclidean between its vertices: the chain of pixel steps would make a
    line at 22.5 degrees 8% longer than it is)."""
    if len(line) < 2:
        return 0.0
    xy = np.array([(v["x"], v["y"]) for v in line])
    steps = np.diff(xy, axis=0)
    return float(np.hypot(steps[:, 0], steps[:, 1]).sum())


def path_length(path: list) -> float:
    if len(path) < 2:
        return 0.0
    steps = np.diff(np.array(path, dtype=float), axis=0)
    return float(np.hypot(steps[:, 0], steps[:, 1]).sum())


def _simplified(path: list, edt: np.ndarray, x0: int, y0: int) -> list[dict]:
    """A path as few vertices (Douglas-Peucker within SIMPLIFY pixels) in photo coordinates (pixel centres),
    each with the median width of the stretch of centre line it stands for (half-way to its neighbours)."""
    from skimage.measure import approximate_polygon

    coords = np.array(path, dtype=float)
    kept = approximate_polygon(coords, tolerance=SIMPLIFY) if len(coords) > 2 else coords
    widths = _width(np.array([edt[y, x] for y, x in path]))
    index = {tuple(p): i for i, p in enumerate(coords.tolist())}
    at = [index[tuple(v)] for v in kept.tolist()]
    out = []
    for k, (y, x) in enumerate(kept.tolist()):
        low = (at[k - 1] + at[k]) // 2 if k > 0 else 0
        high = (at[k] + at[k + 1]) // 2 if k + 1 < len(at) else len(path) - 1
        out.append({"x": float(x + x0), "y": float(y + y0),
                    "width_px": float(np.median(widths[min(low, at[k]): max(high, at[k]) + 1]))})
    return out


def orientation(centre: np.ndarray, junctions: int) -> str:
    """transverse, longitudinal, diagonal or map, from the principal direction of centre-line pixels (y, x)."""
    if len(centre) < 2:
        return "diagonal"
    spread = np.cov((centre - centre.mean(axis=0)).T)
    values, vectors = np.linalg.eigh(spread)
    if junctions >= MAP_JUNCTIONS and values[0] > 0.25 * values[1]:
        return "map"
    dy, dx = vectors[:, 1]
    angle = math.degrees(math.atan2(abs(dy), abs(dx)))  # 0: along x, 90: along y
    if angle < DIAGONAL_FROM:
        return "transverse"
    if angle > DIAGONAL_TO:
        return "longitudinal"
    return "diagonal"
