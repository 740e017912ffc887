"""SQL over committed scoring results: DuckDB over the results table (local or s3://, offline).

    cracknet query --results s3://survey/results \\
        "SELECT image_uri, crack_probability FROM likely_cracks_since('2026-11-23') LIMIT 20"

The connection registers the results table (``cracknet.table.results``) and the runs table
(``cracknet.table.runs``), defines the views below, then locks itself down.

Views on a connection:

    results                     the table as stored (with the nested tiles)
    images                      one row per scored image and run (docs/results.md describes the columns), with its
                                structure: its site where positions group photos (``sites``), else its folder
    sites                       each photo's site, with ``cracknet score --structure-from gps:RADIUS_M``
    tiles                       one row per tile of a tiled image
    runs                        one row per run: its model, weights, threshold, settings and counts (cracknet.table.runs)
    in_force                    the model of the newest scoring run (the one ``current`` prefers)
    current                     one row per image, for counting: the row of the model in force (that of the newest
                                run) if it has one, a verdict before a transient error, then the newest
    structures                  per structure of current images: images, cracks, errors, crack length
    cracks                      one row per crack of the current images (models with a mask decoder)
    located                     scored images (no error rows), with their structure
    failures                    current images that could not be scored, and why
    likely_cracks_since(day)    current cracked images scored on or after a day, most likely first
    tiles_above(uri, p)         the current tiles of one image at or above a probability
    wider_than(mm)              current cracks whose 95th-percentile width (the one severity grades) exceeds mm
    survey_runs                 per structure, the runs that surveyed it: first scored one of its photos
    surveys                     per structure and survey: all its photos then in force (as the survey's model judged
                                them), cracked ones, crack length
    survey_baselines            per structure and survey: the structure just before it, as that survey's model
                                judged it
    survey_changes              per structure and survey: the structure before and after it, by the same model
    structure_changes           per structure, its newest survey against the structure just before it (largest
                                growth first)
    findings                    one row per crack of the current images, and per current image judged cracked with
                                no crack drawn: severity, size, and where it lies (``cracknet.table.places``): the
                                crack's own longitude and latitude and its line where the photo has a ground frame,
                                else the photo's position
"""

from __future__ import annotations

import atexit
import io
import json
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass

import pyarrow as pa

from cracknet import storage
from cracknet.config import REQUIRED, option
from cracknet.errors import CracknetError
from cracknet.numbers import Range, check_fields, checked
from cracknet.screen import first_line, printable
from cracknet.table import places, results, runs, sites

QUERY_SECONDS = 300.0   # a statement still running after this long is stopped (--timeout)
QUERY_MEMORY = "2GB"    # DuckDB's memory limit for a query; beyond it, it spills to a folder under the system temp


QUERY_TIMEOUT = Range(0, 7 * 86_400, low_open=True)


@dataclass(frozen=True)
class QueryConfig:
    """``cracknet query``: SQL over committed scoring results."""
    results: str = option(REQUIRED, "the scoring output: a folder or s3:// prefix")
    sql: str = option(REQUIRED, "a DuckDB SQL query, e.g. \"SELECT * FROM likely_cracks_since('2026-11-23')\"",
                      positional=True)
    format: str = option("table", "how the rows are printed", choices=("table", "csv", "json"))
    timeout: float = option(QUERY_SECONDS, "stop a query still running after this many seconds",
                            range=QUERY_TIMEOUT)
    memory_limit: str = option(QUERY_MEMORY, "DuckDB's memory limit; beyond it a query spills to the system temp")

    def __post_init__(self):
        check_fields(self)


def run_query(uri: str, sql: str, con=None, timeout: float = QUERY_SECONDS, memory_limit: str = QUERY_MEMORY) \
        -> pa.Table:
    """Run ``sql`` over the results at ``uri`` (on ``con`` when given, so that many queries share one), for at most
    ``timeout`` seconds. The statement runs in a worker thread so that SIGINT and SIGTERM reach this one, which
    then interrupts it (``Connection.interrupt``) before unwinding."""
    import duckdb

    timeout = checked("--timeout", timeout, QUERY_TIMEOUT)
    if not _statements(sql):
        raise CracknetError("The query holds no SQL statement (it is empty or only comments); give a SELECT.")
    con = con or connect(uri, memory_limit=memory_limit)
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
        raise CracknetError(f"The query failed: {first_line(found)}") from None
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


# ---------------------------------------------------------------------------------------------------
# The views and the locked connection


VIEWS = """
CREATE VIEW sites AS  -- each photo's site, where positions group photos into structures (cracknet.table.sites)
    SELECT image_uri, arg_min(structure, run_id) AS structure FROM site_rows GROUP BY image_uri;
CREATE VIEW images AS
    SELECT r.* EXCLUDE (tiles, cracks), coalesce(s.structure, regexp_replace(r.image_uri, '/[^/]*$', '')) AS structure
    FROM results r LEFT JOIN sites s USING (image_uri);
CREATE VIEW tiles AS
    SELECT image_uri, t.tile_x, t.tile_y, t.tile_w, t.tile_h, t.crack_probability, model_id, run_id, run_date
    FROM (SELECT image_uri, model_id, run_id, run_date, unnest(tiles) AS t FROM results WHERE len(tiles) > 0);
CREATE VIEW in_force AS
    SELECT model_id FROM runs WHERE job = 'scoring' ORDER BY started_at DESC, run_id DESC LIMIT 1;
CREATE VIEW current AS
    SELECT * FROM images QUALIFY row_number() OVER (PARTITION BY image_uri ORDER BY
        model_id IS NOT DISTINCT FROM (SELECT model_id FROM in_force) DESC,  -- the model the newest run named
        (error IS NULL OR error_kind = 'permanent') DESC,  -- a verdict over a transient failure
        scored_at DESC, run_id DESC) = 1;
CREATE VIEW structures AS
    SELECT structure,
           count(*) AS images,
           count(*) FILTER (WHERE is_crack) AS cracks,
           count(*) FILTER (WHERE error IS NOT NULL) AS errors,
           max(crack_probability) AS max_crack_probability,
           sum(crack_length_mm) AS crack_length_mm,
           max(crack_width_max_mm) AS crack_width_max_mm,
           max(scored_at) AS last_scored_at
    FROM current GROUP BY 1 ORDER BY cracks DESC, max_crack_probability DESC NULLS LAST;
CREATE VIEW cracks AS
    SELECT r.image_uri, k.structure, c.*, r.mm_per_pixel, r.mask_uri, r.model_id, r.run_id, r.run_date, r.scored_at
    FROM (SELECT image_uri, mm_per_pixel, mask_uri, model_id, run_id, run_date, scored_at, unnest(cracks) AS c
          FROM results WHERE len(cracks) > 0) r
    JOIN (SELECT image_uri, run_id, structure FROM current) k ON r.image_uri = k.image_uri AND r.run_id = k.run_id;
CREATE VIEW located AS
    SELECT * FROM images WHERE error IS NULL;
CREATE VIEW survey_runs AS  -- a run surveys a structure when it is the first to score one of its photos (at its
    -- version); a rescoring of the same photos (another model, --retry-errors) is not a survey
    SELECT f.structure, f.run_id, any_value(m.model_id) AS model_id, min(f.scored_at) AS scored_at
    FROM (SELECT structure, arg_min(run_id, run_id) AS run_id, min(scored_at) AS scored_at
          FROM located GROUP BY structure, image_uri, version) f
    JOIN (SELECT DISTINCT run_id, model_id FROM located) m USING (run_id)
    GROUP BY 1, 2;
CREATE VIEW surveys AS  -- each structure after each survey: all its photos then in force, as that survey's model
    -- judged them (each photo's newest row of that model up to the survey)
    SELECT structure, run_id, any_value(scored_at) AS scored_at, count(*) AS images,
           count(*) FILTER (WHERE is_crack) AS cracks, coalesce(sum(crack_count), 0) AS crack_count,
           coalesce(sum(crack_length_mm), 0) AS crack_length_mm, max(crack_width_max_mm) AS crack_width_max_mm
    FROM (SELECT s.structure, s.run_id, s.scored_at, r.is_crack, r.crack_count, r.crack_length_mm,
                 r.crack_width_max_mm
          FROM survey_runs s JOIN located r
            ON r.structure = s.structure AND r.model_id = s.model_id AND r.run_id <= s.run_id
          QUALIFY row_number() OVER (PARTITION BY s.structure, s.run_id, r.image_uri ORDER BY r.run_id DESC) = 1)
    GROUP BY 1, 2;
CREATE VIEW survey_baselines AS  -- each structure just before each survey, as the survey's model judged it
    SELECT structure, run_id, count(*) AS images, count(*) FILTER (WHERE is_crack) AS cracks,
           coalesce(sum(crack_length_mm), 0) AS crack_length_mm
    FROM (SELECT s.structure, s.run_id, r.is_crack, r.crack_length_mm
          FROM survey_runs s JOIN located r
            ON r.structure = s.structure AND r.model_id = s.model_id AND r.run_id < s.run_id
          QUALIFY row_number() OVER (PARTITION BY s.structure, s.run_id, r.image_uri ORDER BY r.run_id DESC) = 1)
    GROUP BY 1, 2;
CREATE VIEW survey_changes AS  -- every survey against the structure just before it (by the same model)
    SELECT a.structure, p.previous_run_id, a.run_id, p.previous_scored_at, a.scored_at,
           b.images AS previous_images, a.images, b.cracks AS previous_cracks, a.cracks,
           a.cracks - b.cracks AS cracks_change,
           b.cracks / b.images AS previous_crack_rate, a.cracks / a.images AS crack_rate,
           b.crack_length_mm AS previous_crack_length_mm, a.crack_length_mm,
           a.crack_length_mm - b.crack_length_mm AS crack_length_mm_change
    FROM surveys a
    JOIN survey_baselines b USING (structure, run_id)
    JOIN (SELECT structure, run_id, lag(run_id) OVER w AS previous_run_id, lag(scored_at) OVER w AS previous_scored_at
          FROM survey_runs WINDOW w AS (PARTITION BY structure ORDER BY run_id)) p USING (structure, run_id)
    WHERE p.previous_run_id IS NOT NULL;
CREATE VIEW structure_changes AS  -- each structure's newest survey against the structure just before it
    SELECT * FROM survey_changes
    QUALIFY row_number() OVER (PARTITION BY structure ORDER BY run_id DESC) = 1
    ORDER BY cracks_change DESC, crack_length_mm_change DESC, structure;
CREATE VIEW failures AS
    SELECT image_uri, error, scored_at, run_id FROM current WHERE error IS NOT NULL ORDER BY scored_at DESC;
CREATE MACRO likely_cracks_since(day) AS TABLE
    SELECT * FROM current
    WHERE is_crack AND scored_at >= CAST(day AS TIMESTAMPTZ)
    ORDER BY crack_probability DESC;
CREATE MACRO wider_than(mm) AS TABLE
    SELECT * FROM cracks WHERE width_p95_mm > mm ORDER BY width_p95_mm DESC;
CREATE MACRO tiles_above(uri, p) AS TABLE
    SELECT t.* FROM tiles t JOIN current c USING (image_uri, run_id)
    WHERE t.image_uri = uri AND t.crack_probability >= p ORDER BY t.crack_probability DESC;
"""


def connect(uri: str, memory_limit: str | None = None):
    """A DuckDB connection with the views above over the committed table at ``uri``, and access to nothing else
    (the query runs with the job's credentials, so it must not reach files, the environment or extensions).
    With ``memory_limit`` (DuckDB's own, e.g. "2GB"), a query that needs more spills to a folder of its own under
    the system temp, removed when the process ends."""
    import duckdb

    if not storage.exists(uri):
        raise CracknetError(f"{uri} does not exist.")
    config = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    if memory_limit:
        spill = tempfile.mkdtemp(prefix="cracknet-query-")
        atexit.register(shutil.rmtree, spill, True)
        config.update(memory_limit=memory_limit, temp_directory=spill)
    try:
        con = duckdb.connect(config=config)
    except duckdb.Error as exc:
        raise CracknetError(f"Cannot open a query connection: {first_line(exc)} "
                            "(--memory-limit takes sizes like 2GB or 512MB).") from None
    con.execute("SET TimeZone = 'UTC'").fetchall()
    con.register("results", results.dataset(uri))
    con.register("runs", runs.read(uri))
    con.register("site_rows", sites.assigned(uri))
    con.execute(VIEWS).fetchall()
    con.execute(places.SQL).fetchall()
    # From here on SQL sees the table and nothing else: no files, no environment, no extensions, and no
    # setting can turn that back on.
    con.execute(LOCKDOWN).fetchall()
    return con


LOCKDOWN = """
SET enable_external_access = false;
SET allow_community_extensions = false;
SET lock_configuration = true;
"""
