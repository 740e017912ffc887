"""SQL over committed scoring results: DuckDB over pyarrow datasets (local or s3://, offline).

    cracknet query --results s3://survey/results \\
        "SELECT image_uri, crack_probability FROM likely_cracks_since('2026-11-23') LIMIT 20"

Only parts named by a committed manifest are visible. Views:

    images                      one row per scored image (see the README for the columns)
    tiles                       one row per tile of a large image
    structures                  per folder (structure) of the image URIs: images, cracks, errors, max probability
    failures                    images that could not be scored, and why
    likely_cracks_since(day)    cracked images scored on or after a day, most likely first
    tiles_above(uri, p)         the tiles of one image above a probability, most likely first
"""

from __future__ import annotations

import csv
import io
import json

import pyarrow as pa

from cracknet import storage
from cracknet.errors import CracknetError
from cracknet.score import IMAGES, IMAGES_SCHEMA, TILES, TILES_SCHEMA, committed_manifests

VIEWS = """
CREATE VIEW structures AS
    SELECT regexp_replace(image_uri, '/[^/]*$', '') AS structure,
           count(*) AS images,
           count(*) FILTER (WHERE is_crack) AS cracks,
           count(*) FILTER (WHERE error IS NOT NULL) AS errors,
           max(crack_probability) AS max_crack_probability,
           max(scored_at) AS last_scored_at
    FROM images GROUP BY 1 ORDER BY cracks DESC, max_crack_probability DESC NULLS LAST;
CREATE VIEW failures AS
    SELECT image_uri, error, scored_at, run_id FROM images WHERE error IS NOT NULL ORDER BY scored_at DESC;
CREATE MACRO likely_cracks_since(day) AS TABLE
    SELECT * FROM images
    WHERE is_crack AND scored_at >= CAST(day AS TIMESTAMPTZ)
    ORDER BY crack_probability DESC;
CREATE MACRO tiles_above(uri, p) AS TABLE
    SELECT * FROM tiles WHERE image_uri = uri AND crack_probability >= p ORDER BY crack_probability DESC;
"""


def _dataset(results: str, kind: str, schema: pa.Schema, manifests: list[dict]):
    import pyarrow.dataset as pads

    paths = [part["path"] for m in manifests for part in m[kind]]
    if not paths:
        return pa.table({f.name: pa.array([], f.type) for f in schema})
    fs, base = storage.resolve(results)
    return pads.dataset([f"{base}/{p}" for p in paths], schema=schema, filesystem=fs, format="parquet")


def connect(results: str):
    """A DuckDB connection with the result views over ``results``."""
    import duckdb

    if not storage.exists(results):
        raise CracknetError(f"{results} does not exist.")
    manifests = committed_manifests(results)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("images_committed", _dataset(results, IMAGES, IMAGES_SCHEMA, manifests))
    con.register("tiles_committed", _dataset(results, TILES, TILES_SCHEMA, manifests))
    con.execute("CREATE VIEW images AS SELECT * FROM images_committed")
    con.execute("CREATE VIEW tiles AS SELECT * FROM tiles_committed")
    con.execute(VIEWS)
    return con


def run_query(results: str, sql: str) -> pa.Table:
    import duckdb

    con = connect(results)
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CracknetError(f"The query failed: {first}") from None


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def render(table: pa.Table, fmt: str) -> str:
    rows = table.to_pylist()
    if fmt == "json":
        return json.dumps(rows, default=str, indent=2)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(table.column_names)
        writer.writerows([[_text(v) for v in row.values()] for row in rows])
        return buffer.getvalue().rstrip("\n")
    cells = [table.column_names] + [[_text(v) for v in row.values()] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(table.column_names))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + [f"({len(rows)} rows)"])
