"""Crack lines drawn over photos: each crack's centre line, as wide as the crack (at least 2 px) and coloured by
its severity class, for ``cracknet explain`` and the report. Needs no torch: the report draws from the results
table's ``cracks`` column.

    shown = draw_cracks(photo, cracks, scale=0.5, classes=parse_width_classes(DEFAULT_WIDTH_CLASSES))
"""

from __future__ import annotations

from PIL import Image, ImageDraw

from cracknet.measure.geometry import WidthClass

# The classes in order, mildest first (yellow to red, then purple for any beyond); a crack without a scale has no
# class and is drawn in cyan.
CLASS_COLOURS = ("#f1c40f", "#e67e22", "#e01e1e", "#8e44ad", "#4a0072")
UNGRADED = "#00bcd4"


def colour_of(severity: str | None, classes: tuple[WidthClass, ...]) -> str:
    names = [c.name for c in classes]
    if severity not in names:
        return UNGRADED
    return CLASS_COLOURS[min(names.index(severity), len(CLASS_COLOURS) - 1)]


def draw_cracks(img: Image.Image, cracks: list[dict], scale: float, classes: tuple[WidthClass, ...]) -> Image.Image:
    """A copy of ``img`` (the photo shown at ``scale`` of its own pixels) with each crack's paths drawn on it;
    ``cracks`` as ``geometry.measure`` gives them or the results table stores them (``paths`` of x, y, width_px)."""
    shown = img.convert("RGB")
    pen = ImageDraw.Draw(shown)
    for crack in sorted(cracks, key=lambda c: c.get("width_p95_px") or 0.0):  # the widest on top
        fill = colour_of(crack.get("severity"), classes)
        for line in crack.get("paths") or []:
            points = [(v["x"] * scale, v["y"] * scale) for v in line]
            if len(points) < 2:
                continue
            width = max(2, round(scale * max(v["width_px"] for v in line)))
            pen.line(points, fill=fill, width=width, joint="curve")
    return shown


def legend(classes: tuple[WidthClass, ...]) -> list[tuple[str, str]]:
    """(colour, what it means) for each class, and for cracks without a scale."""
    bounds, low = [], 0.0
    for c in classes:
        bounds.append((colour_of(c.name, classes),
                       f"{c.name}: {low:g}-{c.below_mm:g} mm" if c.below_mm is not None else f"{c.name}: over {low:g} mm"))
        low = c.below_mm or low
    return bounds + [(UNGRADED, "no scale given (--mm-per-pixel): not graded")]
