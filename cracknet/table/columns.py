"""Per-image values from scoring as typed columns of the results table: the cracks a mask decoder found, and
where and how each photo was taken. ``results.part_table`` puts a file's rows together from them."""

from __future__ import annotations

import json
from datetime import datetime

import pyarrow as pa

from cracknet.table.schema import CRACK, VERTEX


def geometry_columns(images: dict, ok) -> dict[str, pa.Array]:
    """The crack columns of one file's rows: nested cracks and their per-image summary (nulls where the model
    draws no masks or the image could not be scored)."""
    n = len(ok)
    found = [json.loads(c) if good and isinstance(c, str) and c else None
             for good, c in zip(ok, images.get("cracks", [None] * n))]
    scale = [float(m) if f is not None and m == m and m > 0 else None
             for f, m in zip(found, images.get("mm_per_pixel", [float("nan")] * n))]
    masks = [u if f is not None and isinstance(u, str) and u else None
             for f, u in zip(found, images.get("mask_uri", [None] * n))]
    rows = [None if f is None else [_crack_row(i, c) for i, c in enumerate(f)] for f in found]

    def total(key):
        return [None if f is None else float(sum(c[key] for c in f)) if all(c[key] is not None for c in f) else None
                for f in found]

    def most(key):
        return [None if f is None or not f or any(c[key] is None for c in f) else float(max(c[key] for c in f))
                for f in found]

    return {"cracks": pa.array(rows, pa.list_(CRACK)),
            "crack_count": pa.array([None if f is None else len(f) for f in found], pa.int32()),
            "crack_length_px": pa.array(total("length_px"), pa.float32()),
            "crack_length_mm": pa.array([t if s is not None else None for t, s in zip(total("length_mm"), scale)],
                                        pa.float32()),
            "crack_width_max_px": pa.array(most("width_max_px"), pa.float32()),
            "crack_width_max_mm": pa.array(most("width_max_mm"), pa.float32()),
            "severity": pa.array([s if f is not None and isinstance(s, str) and s else None
                                  for f, s in zip(found, images.get("severity", [None] * n))], pa.string()),
            "mm_per_pixel": pa.array(scale, pa.float32()),
            "mask_uri": pa.array(masks, pa.string()),
            **{name: pa.array([v if s is not None and isinstance(v, str) and v else None
                               for s, v in zip(scale, images.get(name, [None] * n))], pa.string())
               for name in ("scale_source", "scale_note")}}


def _crack_row(i: int, crack: dict) -> dict:
    box = crack["bbox"]
    return {"crack": i, **{k: crack[k] for k in CRACK.names if k in crack and k != "paths"},
            "bbox_x": box["x"], "bbox_y": box["y"], "bbox_w": box["w"], "bbox_h": box["h"],
            "paths": [[{k: v[k] for k in VERTEX.names} for v in line] for line in crack["paths"]]}


def place_columns(photos: list, schema: pa.Schema) -> dict[str, pa.Array]:
    """Where and how each photo was taken (``images.metadata.table_fields``, as JSON text; "" or None where the
    photo said nothing or could not be read) as the columns ``schema`` gives them."""
    from cracknet.table.schema import PLACE_COLUMNS

    found = [json.loads(p) if isinstance(p, str) and p else {} for p in photos]
    columns = {}
    for name in PLACE_COLUMNS:
        values = [f.get(name) for f in found]
        if name == "captured_at":
            values = [datetime.fromisoformat(v) if isinstance(v, str) else None for v in values]
        columns[name] = pa.array(values, schema.field(name).type)
    return columns
