"""``cracknet export``: the findings (``cracknet.table.places``), and optionally every current image, as a file GIS
tools open: GeoParquet 1.1, GeoJSON (RFC 7946) or CSV.

    cracknet export --results s3://survey/results --format geoparquet --output s3://survey/exports/findings.parquet \\
        --since 2026-11-23 --structure deck-7 --min-severity moderate

Each row is a point (the crack's centre on the ground, or the photo's position) or, for a crack placed on the
ground, its centre lines as a MultiLineString; a finding with no position has no geometry and is still written.
Coordinates are longitude and latitude on WGS 84 (OGC:CRS84, GeoParquet's and GeoJSON's default). GeoParquet
stores geometry as WKB under the file's ``geo`` key; CSV carries it as WKT in ``geometry_wkt``, beside
``longitude`` and ``latitude``. The file is written whole, or not at all (``storage.write_bytes``).
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from datetime import date

import pyarrow as pa

from cracknet import storage
from cracknet.config import REQUIRED, option
from cracknet.errors import CracknetError
from cracknet.measure.geometry import DEFAULT_WIDTH_CLASSES, parse_width_classes
from cracknet.numbers import check_fields
from cracknet.table.query import connect, render, run_query

FORMATS = ("geoparquet", "geojson", "csv")
GEOPARQUET_VERSION = "1.1.0"
DECIMALS = 8  # of a degree in GeoJSON and WKT: about a millimetre
# What each exported row carries, in this order (cracknet.table.places describes the findings' columns).
COLUMNS = ("structure", "image_uri", "kind", "crack", "severity", "length_mm", "width_p95_mm", "width_max_mm",
           "orientation", "crack_probability", "longitude", "latitude", "position_source", "mm_per_pixel",
           "scale_source", "captured_at", "scored_at", "run_id", "model_id", "mask_uri", "error")


@dataclass(frozen=True)
class ExportConfig:
    """``cracknet export``: the findings as GeoParquet, GeoJSON or CSV."""
    results: str = option(REQUIRED, "the scoring output: a folder or s3:// prefix")
    output: str = option(REQUIRED, "the file to write: a path or s3:// URI")
    format: str = option("geoparquet", "the file's format", choices=FORMATS)
    since: str | None = option(None, "only rows scored on or after this day (YYYY-MM-DD)")
    structure: str | None = option(None, "only this structure: its folder, or the folder's last name")
    min_severity: str | None = option(None, "only cracks of this width class or worse (a name from --width-classes)")
    width_classes: str = option(DEFAULT_WIDTH_CLASSES, "the width classes scoring graded by, narrowest first")
    all_images: bool = option(False, "every current image, not only findings: each image without one as a point")

    def __post_init__(self):
        check_fields(self)
        if storage.overlap(self.output, self.results):
            raise CracknetError(f"--output {self.output} lies inside the results table {self.results} (compaction "
                                "would delete it); write the export elsewhere.")
        names = [c.name for c in parse_width_classes(self.width_classes)]
        if self.min_severity is not None and self.min_severity not in names:
            raise CracknetError(f"--min-severity {self.min_severity!r} is not one of the width classes "
                                f"({', '.join(names)}).")
        if self.since is not None:
            try:
                date.fromisoformat(self.since)
            except ValueError:
                raise CracknetError(f"--since {self.since!r} is not a day as YYYY-MM-DD.") from None


def export(cfg: ExportConfig) -> dict:
    """Write the rows ``cfg`` selects to ``cfg.output``; returns counts for the summary line."""
    table = rows(cfg)
    geometries = [geometry(r) for r in table.to_pylist()]
    write = {"geoparquet": geoparquet, "geojson": geojson, "csv": csv_text}[cfg.format]
    storage.write_bytes(cfg.output, write(table, geometries))
    sources = table.column("position_source").to_pylist()
    return {"rows": table.num_rows, "output": cfg.output, "format": cfg.format,
            "on_ground": sources.count("crack"), "at_photo": sources.count("photo"), "unplaced": sources.count(None),
            "lines": sum(1 for g in geometries if g and g[0] == "MultiLineString")}


def rows(cfg: ExportConfig) -> pa.Table:
    """The findings (and with ``all_images`` every other current image) that pass the filters, as columns
    ``COLUMNS`` plus ``line``."""
    con = connect(cfg.results)
    where = []
    if cfg.since:
        where.append(f"scored_at >= TIMESTAMPTZ '{date.fromisoformat(cfg.since).isoformat()}'")
    if cfg.structure:
        name = cfg.structure.rstrip("/").replace("'", "''")
        where.append(f"(structure = '{name}' OR ends_with(structure, '/' || '{name}'))")
    if cfg.min_severity:
        names = [c.name for c in parse_width_classes(cfg.width_classes)]
        worse = ", ".join(f"'{n}'" for n in names[names.index(cfg.min_severity):])
        where.append(f"severity IN ({worse})")
    images = "" if not cfg.all_images else """
        UNION ALL BY NAME
        SELECT structure, image_uri,
               CASE WHEN error IS NULL THEN 'image' ELSE 'error' END AS kind, severity, crack_probability,
               longitude, latitude, CASE WHEN latitude IS NOT NULL THEN 'photo' END AS position_source,
               mm_per_pixel, scale_source, captured_at, scored_at, run_id, model_id, mask_uri, error
        FROM current WHERE image_uri NOT IN (SELECT image_uri FROM findings)"""
    sql = f"""
        SELECT {', '.join(COLUMNS)}, line FROM (
            SELECT *, CASE WHEN crack IS NULL THEN 'cracked image' ELSE 'crack' END AS kind, NULL AS error
            FROM findings {images})
        {('WHERE ' + ' AND '.join(where)) if where else ''}
        ORDER BY structure, image_uri, crack NULLS FIRST"""
    return run_query(cfg.results, sql, con=con)


def geometry(row: dict) -> tuple | None:
    """("MultiLineString", [[(lon, lat), ...], ...]) for a crack's line on the ground, ("Point", (lon, lat)) for a
    position, None for none."""
    lines = [[(v["longitude"], v["latitude"]) for v in path] for path in row.get("line") or []]
    lines = [line for line in lines if len(line) >= 2]
    if lines:
        return "MultiLineString", lines
    if row["longitude"] is not None and row["latitude"] is not None:
        return "Point", (row["longitude"], row["latitude"])
    return None


# ---------------------------------------------------------------------------------------------------
# The formats


def wkb(shape: tuple | None) -> bytes | None:
    """ISO WKB, little-endian: Point (type 1) or MultiLineString (type 5) of LineStrings (type 2)."""
    if shape is None:
        return None
    kind, coords = shape
    if kind == "Point":
        return struct.pack("<BIdd", 1, 1, *coords)
    parts = [struct.pack("<BII", 1, 2, len(line)) + b"".join(struct.pack("<dd", *xy) for xy in line)
             for line in coords]
    return struct.pack("<BII", 1, 5, len(parts)) + b"".join(parts)


def wkt(shape: tuple | None) -> str | None:
    if shape is None:
        return None
    kind, coords = shape
    if kind == "Point":
        return f"POINT ({_xy(coords)})"
    return "MULTILINESTRING (" + ", ".join("(" + ", ".join(_xy(xy) for xy in line) + ")" for line in coords) + ")"


def _xy(xy: tuple) -> str:
    return " ".join(f"{round(v, DECIMALS):.{DECIMALS}f}".rstrip("0").rstrip(".") for v in xy)


def _bbox(shapes: list) -> list[float] | None:
    points = [xy for s in shapes if s for xy in ([s[1]] if s[0] == "Point" else [p for line in s[1] for p in line])]
    if not points:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return [min(xs), min(ys), max(xs), max(ys)]


def geoparquet(table: pa.Table, shapes: list) -> bytes:
    """GeoParquet 1.1: the attributes, and ``geometry`` as WKB described under the file metadata's ``geo`` key
    (no ``crs``: OGC:CRS84)."""
    import pyarrow.parquet as pq

    column = {"encoding": "WKB", "geometry_types": sorted({s[0] for s in shapes if s})}
    box = _bbox(shapes)
    if box:
        column["bbox"] = box
    geo = {"version": GEOPARQUET_VERSION, "primary_column": "geometry", "columns": {"geometry": column}}
    out = table.drop_columns(["line"]).append_column("geometry", pa.array([wkb(s) for s in shapes], pa.binary()))
    out = out.replace_schema_metadata({"geo": json.dumps(geo)})
    buffer = io.BytesIO()
    pq.write_table(out, buffer, compression="zstd")
    return buffer.getvalue()


def geojson(table: pa.Table, shapes: list) -> bytes:
    """A GeoJSON FeatureCollection (RFC 7946: longitude, latitude on WGS 84), one Feature per row."""
    features = []
    for row, shape in zip(table.drop_columns(["line"]).to_pylist(), shapes):
        geometry_ = None
        if shape is not None:
            kind, coords = shape
            rounded = ([round(v, DECIMALS) for v in coords] if kind == "Point"
                       else [[[round(v, DECIMALS) for v in xy] for xy in line] for line in coords])
            geometry_ = {"type": kind, "coordinates": rounded}
        properties = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}
        features.append({"type": "Feature", "geometry": geometry_, "properties": properties})
    return json.dumps({"type": "FeatureCollection", "features": features}, allow_nan=False).encode()


def csv_text(table: pa.Table, shapes: list) -> bytes:
    """CSV with a WKT column (what GDAL's and QGIS's CSV readers take); text a spreadsheet would run is inert."""
    out = table.drop_columns(["line"]).append_column("geometry_wkt", pa.array([wkt(s) for s in shapes], pa.string()))
    return (render(out, "csv") + "\n").encode()
