"""SQL over committed scoring results: DuckDB over the results table (local or s3://, offline).

    cracknet query --results s3://survey/results \\
        "SELECT image_uri, crack_probability FROM likely_cracks_since('2026-11-23') LIMIT 20"

The views (images, tiles, current, structures, failures, likely_cracks_since,
tiles_above) are defined with the format, in ``cracknet.results``.
"""

from __future__ import annotations

import io
import json
import re

import pyarrow as pa

from cracknet import results
from cracknet.errors import CracknetError


def run_query(uri: str, sql: str, con=None) -> pa.Table:
    """Run ``sql`` over the results at ``uri`` (on ``con`` when given, so that many queries share one)."""
    import duckdb

    con = con or results.connect(uri)
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CracknetError(f"The query failed: {first}") from None


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _text(value) -> str:
    """A cell as shown in a terminal: control characters (escape sequences included) become "?"."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return _CONTROL.sub("?", str(value).replace("\t", " ").replace("\n", " "))


def _flat(table: pa.Table) -> pa.Table:
    """Nested columns (lists, structs) as JSON text, so that every column fits in a CSV cell."""
    for i, field in enumerate(table.schema):
        if pa.types.is_nested(field.type):
            text = [None if v is None else json.dumps(v, default=str) for v in table.column(i).to_pylist()]
            table = table.set_column(i, field.name, pa.array(text, pa.string()))
    return table


def render(table: pa.Table, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(table.to_pylist(), default=str, indent=2)
    if fmt == "csv":  # Arrow's writer: every number exactly as stored (the shortest text that reads back the same)
        import csv

        import pyarrow.csv as pacsv

        header = io.StringIO()
        csv.writer(header, lineterminator="\n").writerow(table.column_names)
        body = io.BytesIO()
        pacsv.write_csv(_flat(table), body, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
        return (header.getvalue() + body.getvalue().decode()).rstrip("\n")
    rows = table.to_pylist()
    cells = [table.column_names] + [[_text(v) for v in row.values()] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(table.column_names))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + [f"({len(rows)} rows)"])
