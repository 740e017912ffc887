"""Planning a scoring run: tonight's listing minus what this model already committed.

    planned = plan_run("s3://survey/2026-11-24/", root, "s3://survey/results", model_id, staging)
    planned["todo"], planned["files"]          # images still to score, and the plan files naming them

An anti-join in DuckDB, never a Python set: the listing streams in once (memory
capped at PLAN_MEMORY, spilling to local disk beyond) and only the key columns of
committed files whose Delta statistics can overlap tonight's URIs are read. The
to-do rows are written sorted by URI as Parquet plan files under the run's
staging folder, which the scoring pipeline reads one per Ray task. The table's
format lives in ``cracknet.table.results``; this module only reads its keys.
"""

from __future__ import annotations

import io
import math
import tempfile
from typing import Iterable
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc

from cracknet import storage
from cracknet.errors import CracknetError
from cracknet.score import inputs
from cracknet.table.results import open_table
from cracknet.table.schema import KEYS

PLAN_MEMORY = "128MB"       # DuckDB's limit while planning; beyond it the anti-join spills to local disk
PLAN_FILES = 64             # a night's plan is split into about this many files (Ray reads one per task)
PLAN_ROWS_PER_FILE = 4096   # ... of at most this many images each




ERROR_ATTEMPTS = 3  # transient error rows an image may collect before later runs stop trying it


def plan(listed: pa.RecordBatchReader, output: str, model_id: str, staging: str, retry_errors: bool = False,
         error_attempts: int = ERROR_ATTEMPTS) -> dict:
    """Write the images still to score as Parquet files under ``staging``; return counts and the files.

    Done for this model: an image (at its version) it scored, or whose error row is permanent, or that failed
    transiently ``error_attempts`` times (then it stays in the ``failures`` view until ``retry_errors``, which
    tries every error row again).

    The listing streams once into DuckDB (memory capped at PLAN_MEMORY, spilling to local disk beyond);
    only the ``image_uri``, ``version`` and ``model_id`` columns of committed files whose statistics can
    overlap tonight's URI range and this model are read. The driver never holds a row per image.
    """
    import duckdb

    failure: list[BaseException] = []
    with tempfile.TemporaryDirectory(prefix="cracknet-plan-") as spill:
        con = duckdb.connect(config={"memory_limit": PLAN_MEMORY, "temp_directory": spill, "threads": 2,
                                     "preserve_insertion_order": False})
        try:
            con.register("listing_stream", pa.RecordBatchReader.from_batches(listed.schema,
                                                                             _remembering(listed, failure)))
            scaled = "mm_per_pixel" in listed.schema.names
            con.execute(LISTING_SQL if scaled else UNSCALED_LISTING_SQL).fetchall()
            listed_n, low, high = con.execute("SELECT count(*), min(image_uri), max(image_uri) FROM listing").fetchall()[0]
            scored, files_read, files_all = scored_keys(output, model_id, low, high)
            con.register("scored", scored)
            attempts_sql, todo_sql = PLAN_SQL.strip().rstrip(";").split(";\n")
            con.execute(attempts_sql, {"model": model_id}).fetchall()
            con.execute(todo_sql, {"retry": retry_errors, "attempts": error_attempts}).fetchall()
            todo = con.execute("SELECT count(*) FROM todo").fetchall()[0][0]
            retried, given_up = con.execute(RETRY_SQL, {"attempts": error_attempts}).fetchall()[0]
            written = _write_plan(con, todo, staging, scaled)
        except duckdb.Error as exc:
            if failure:
                raise failure[0] from None
            raise CracknetError(f"Planning the run failed: {str(exc).strip().splitlines()[0]}") from None
        finally:
            con.close()
    return {"listed": listed_n, "todo": todo, "files": written, "history_files_read": files_read,
            "history_files": files_all, "errors_retried": int(retried or 0), "errors_given_up": int(given_up or 0)}


# A photo listed more than once is one photo: its scale is the one scale its rows give (empty cells aside); rows
# that give it different scales make it an error row, as does a bad cell (``inputs.scale_of``).
LISTING_SQL = """
CREATE TEMP TABLE listing AS
    SELECT image_uri, version,
           CASE WHEN count(DISTINCT mm_per_pixel) > 1 THEN NULL ELSE max(mm_per_pixel) END AS mm_per_pixel,
           CASE WHEN count(DISTINCT mm_per_pixel) > 1
                THEN 'The manifest lists this photo ' || count(*) || ' times with different mm_per_pixel ('
                     || string_agg(DISTINCT CAST(mm_per_pixel AS VARCHAR), ', ' ORDER BY CAST(mm_per_pixel AS VARCHAR))
                     || '); list it once, or with one scale.'
                ELSE max(listing_error) END AS listing_error
    FROM listing_stream GROUP BY image_uri, version
"""
UNSCALED_LISTING_SQL = """
CREATE TEMP TABLE listing AS
    SELECT image_uri, version, CAST(NULL AS FLOAT) AS mm_per_pixel, CAST(NULL AS VARCHAR) AS listing_error
    FROM listing_stream GROUP BY image_uri, version
"""

PLAN_SQL = """
CREATE TEMP TABLE attempts AS
    SELECT image_uri, version,
           bool_or(error IS NULL) AS scored,
           bool_or(error IS NOT NULL AND error_kind = 'permanent') AS permanent,
           -- a row the listing could not give ('listing': a bad manifest cell) is tried whenever it is listed again
           count(*) FILTER (WHERE error IS NOT NULL AND coalesce(error_kind, '') NOT IN ('permanent', 'listing'))
               AS transient
    FROM scored WHERE model_id = $model GROUP BY image_uri, version;
CREATE TEMP TABLE todo AS
    WITH done AS (SELECT image_uri, version FROM attempts
                  WHERE scored OR (NOT $retry AND (permanent OR transient >= $attempts)))
    SELECT l.* FROM listing l ANTI JOIN done d USING (image_uri, version) WHERE l.version <> ''
    UNION ALL  -- a row without a version counts as scored once its URI was scored at any version
    SELECT l.* FROM listing l ANTI JOIN done d USING (image_uri) WHERE l.version = '';
"""

RETRY_SQL = """
SELECT count(*) FILTER (WHERE a.image_uri IS NOT NULL AND NOT a.scored),
       (SELECT count(*) FROM attempts a JOIN listing l USING (image_uri, version)
        WHERE NOT a.scored AND NOT a.permanent AND a.transient >= $attempts)
FROM todo t LEFT JOIN attempts a USING (image_uri, version)
"""


def _remembering(batches: Iterable[pa.RecordBatch], failure: list) -> Iterable[pa.RecordBatch]:
    """Pass batches through, keeping the exception that ended them (DuckDB reports it without its sentence)."""
    try:
        yield from batches
    except BaseException as exc:
        failure.append(exc)
        raise


def _write_plan(con, todo: int, staging: str, scaled: bool = False) -> list[str]:
    """The to-do rows, sorted by URI (so the files a run writes cover narrow URI ranges), as plan files; with
    each photo's scale where the listing gave scales (``scaled``)."""
    import pyarrow.parquet as pq

    if not todo:
        return []
    rows = min(PLAN_ROWS_PER_FILE, max(1, math.ceil(todo / PLAN_FILES)))
    columns = "image_uri, version, mm_per_pixel, listing_error" if scaled else "image_uri, version"
    reader = con.sql(f"SELECT {columns} FROM todo ORDER BY image_uri").to_arrow_reader(rows)
    written = []
    for batch in _rebatched(reader, rows):
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_batches([batch]), buffer, compression="zstd")
        uri = storage.join(staging, f"plan-{len(written):06d}.parquet")
        storage.write_bytes(uri, buffer.getvalue())
        written.append(uri)
    return written


def _rebatched(reader: pa.RecordBatchReader, rows: int) -> Iterable[pa.RecordBatch]:
    """Batches of exactly ``rows`` rows (the last one shorter), whatever sizes the reader yields."""
    held: list[pa.RecordBatch] = []
    count = 0
    for batch in reader:
        held.append(batch)
        count += batch.num_rows
        while count >= rows:
            table = pa.Table.from_batches(held).combine_chunks()
            yield table.slice(0, rows).to_batches()[0]
            rest = table.slice(rows)
            held, count = (rest.to_batches() if rest.num_rows else []), rest.num_rows
    if count:
        yield pa.Table.from_batches(held).combine_chunks().to_batches()[0]


def scored_keys(output: str, model_id: str, low: str | None, high: str | None):
    """(image_uri, version, model_id) of the committed files that may hold ``model_id`` rows with URIs in
    [low, high], judged by each file's Delta statistics; returns (dataset, files read, files in the table)."""
    import pyarrow.dataset as pads

    table = open_table(output) if low is not None else None
    if table is None:
        return pa.table({f.name: pa.array([], f.type) for f in KEYS}), 0, 0
    files = pa.table(table.get_add_actions(flatten=True))
    keep = pa.array([True] * files.num_rows, pa.bool_())
    for column, lo, hi in (("image_uri", low, high), ("model_id", model_id, model_id)):
        if f"min.{column}" in files.column_names:  # a missing statistic cannot rule a file out
            below = pc.fill_null(pc.less_equal(files.column(f"min.{column}"), hi), True)
            above = pc.fill_null(pc.greater_equal(files.column(f"max.{column}"), lo), True)
            keep = pc.and_(keep, pc.and_(below, above))
    paths = [unquote(p) for p in files.filter(keep).column("path").to_pylist()]
    fs, base = storage.resolve(output)
    dataset = pads.dataset([f"{base}/{p}" for p in paths], schema=KEYS, filesystem=fs, format="parquet")
    return dataset, len(paths), files.num_rows


def plan_run(input_uri: str, root: str, output: str, model_id: str, staging: str, retry_errors: bool = False) -> dict:
    """Tonight's listing (see ``cracknet.score.inputs``) minus what the model committed, written as plan files."""
    return plan(inputs.listing(input_uri, root), output, model_id, staging, retry_errors=retry_errors)


def plan_line(run_id: str, planned: dict) -> str:
    """The console line that says what a run is about to score."""
    line = f"Planned run {run_id}: {planned['todo']} of {planned['listed']} listed images to score"
    notes = []
    if planned["errors_retried"]:
        notes.append(f"{planned['errors_retried']} of them after an error that may pass")
    if planned["errors_given_up"]:
        notes.append(f"{planned['errors_given_up']} failed {ERROR_ATTEMPTS} times and are no longer tried "
                     "(see the failures view; --retry-errors tries them again)")
    return line + (f" ({'; '.join(notes)})." if notes else ".")
