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
import threading
import time

import pyarrow as pa

from cracknet import results
from cracknet.errors import CracknetError
from cracknet.numbers import Range, checked
from cracknet.screen import printable


QUERY_SECONDS = 300.0   # a statement still running after this long is stopped (--timeout)
QUERY_MEMORY = "2GB"    # DuckDB's memory limit for a query; beyond it, it spills to a folder under the system temp


def run_query(uri: str, sql: str, con=None, timeout: float = QUERY_SECONDS, memory_limit: str = QUERY_MEMORY) \
        -> pa.Table:
    """Run ``sql`` over the results at ``uri`` (on ``con`` when given, so that many queries share one), for at most
    ``timeout`` seconds. The statement runs in a worker thread so that SIGINT and SIGTERM reach this one, which
    then interrupts it (``Connection.interrupt``) before unwinding."""
    import duckdb

    timeout = checked("--timeout", timeout, Range(0, 7 * 86_400, low_open=True))
    if not _statements(sql):
        raise CracknetError("The query holds no SQL statement (it is empty or only comments); give a SELECT.")
    con = con or results.connect(uri, memory_limit=memory_limit)
    outcome: list = []

    def work() -> None:
        try:
            relation = con.sql(sql)
            outcome.append(relation.to_arrow_table() if relation is not None else
                           CracknetError("The query returned no rows to show; give a SELECT."))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome.append(exc)

    worker = threading.Thread(target=work, name="cracknet-query", daemon=True)
    worker.start()
    ends = time.monotonic() + timeout
    try:
        while worker.is_alive() and time.monotonic() < ends:
            worker.join(0.1)
    except BaseException:  # SIGINT (KeyboardInterrupt) or SIGTERM (Terminated): stop the statement, then unwind
        con.interrupt()
        worker.join(10)
        raise
    if worker.is_alive():
        con.interrupt()
        worker.join(10)
        raise CracknetError(f"The query ran longer than {timeout:g} s and was stopped; narrow it (a WHERE on "
                            "run_date, a LIMIT) or give --timeout.")
    found = outcome[0]
    if isinstance(found, duckdb.Error):
        first = str(found).strip().splitlines()[0] if str(found).strip() else type(found).__name__
        raise CracknetError(f"The query failed: {first}") from None
    if isinstance(found, BaseException):
        raise found
    return found


def _statements(sql: str) -> bool:
    """Whether ``sql`` holds anything but white space, semicolons and comments."""
    text = re.sub(r"/\*.*?(\*/|$)", " ", sql, flags=re.S)
    text = re.sub(r"--[^\n]*", " ", text)
    return bool(text.replace(";", " ").strip())


def _text(value) -> str:
    """A cell as shown in a terminal: control characters (escape sequences included) become "?"."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return printable(value)


def _flat(table: pa.Table) -> pa.Table:
    """Nested columns (lists, structs) as JSON text, so that every column fits in a CSV cell."""
    for i, field in enumerate(table.schema):
        if pa.types.is_nested(field.type):
            text = [None if v is None else json.dumps(v, default=str) for v in table.column(i).to_pylist()]
            table = table.set_column(i, field.name, pa.array(text, pa.string()))
    return table


# A text cell a spreadsheet would run as a formula (OWASP's CSV injection): it gets a leading apostrophe.
_FORMULA = r"^[=+\-@\t\r]"


def _inert(table: pa.Table) -> pa.Table:
    """Text cells starting with =, +, -, @, a tab or a carriage return, prefixed with ' so that a spreadsheet
    shows them as text; numbers are left as they are."""
    import pyarrow.compute as pc

    for i, field in enumerate(table.schema):
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            column = table.column(i)
            risky = pc.fill_null(pc.match_substring_regex(column, _FORMULA), False)
            table = table.set_column(i, field.name, pc.if_else(risky, pc.binary_join_element_wise("'", column, ""),
                                                                  column))
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
        pacsv.write_csv(_inert(_flat(table)), body, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
        return (header.getvalue() + body.getvalue().decode()).rstrip("\n")
    rows = table.to_pylist()
    cells = [table.column_names] + [[_text(v) for v in row.values()] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(table.column_names))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + [f"({len(rows)} rows)"])
