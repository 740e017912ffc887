"""The results table: one home for the format that scoring writes and everything else reads.

    table = open_table("s3://survey/results")        # the Delta table, or None before the first commit
    dataset("s3://survey/results")                   # its committed files as a pyarrow dataset

The scoring output is a Delta Lake table (``<output>/_delta_log`` plus Parquet
files, zstd, partitioned by ``run_date``), so Spark, Trino, Athena, Databricks,
DuckDB, Polars and pandas read it as it is. One row per scored image; the tiles
of a large photo ride along in the same row (``tiles``: a list of structs), so
images and tiles are committed together and can never disagree.

A scoring run writes its Parquet files from Ray tasks and commits them from the
driver in one Delta commit: readers see all of a run or none of it. Files of a
run that died are never referenced; ``cracknet compact`` vacuums them. The run's
model and settings travel as commit metadata (``cracknet.*`` in commitInfo).

Names starting with ``_`` under the output are not table data (Delta's rule):
``_delta_log``, the scoring lease and a run's ``_staging`` plan files. The views
people query are defined over this table and the runs table in ``cracknet.table.query``.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
import time
import uuid
from dataclasses import dataclass
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from cracknet import storage
from cracknet.errors import CracknetError, StorageUnavailable
from cracknet.table.columns import geometry_columns, place_columns
from cracknet.table.schema import ADDED_COLUMNS, FILE_SCHEMA, IMAGE_STATISTICS, PARTITION, SCHEMA, STATS_COLUMNS, TILE

LOG = "_delta_log"
STAGING = "_staging"
MASKS = "_masks"  # where --masks may put crack masks inside an output
OLD_MANIFESTS = "_manifests"
TABLE_NAME = "cracknet_results"
COMMIT_ATTEMPTS = 3
# A checkpoint every 10 commits (Spark's default; delta-rs would wait for 100), so opening the table
# reads one checkpoint and at most nine small commit files however long the history.
TABLE_CONFIGURATION = {"delta.checkpointInterval": "10"}

# The files a scoring run writes into the table, and the only table files cracknet ever deletes.
PART_FILE = re.compile(r"run_date=\d{4}-\d{2}-\d{2}/part-[A-Za-z0-9_.-]+\.parquet")
# What else cracknet keeps under an output: the log, the lease, plans, the runs table.
OWN_FOLDERS = (LOG, STAGING, MASKS, "_runs", "_lease", "_lease.json")


# ---------------------------------------------------------------------------------------------------
# Where the table is


def table_exists(uri: str) -> bool:
    return storage.exists(storage.join(uri, LOG))


def refuse_old_layout(uri: str) -> None:
    if not table_exists(uri) and storage.exists(storage.join(uri, OLD_MANIFESTS)):
        raise CracknetError(f"{uri} holds results in cracknet's earlier Parquet-and-manifest layout, not a Delta "
                            "table; score into a new --output (the old parts stay readable as plain Parquet).")


def own_file(relative: str) -> bool:
    """Whether a file (its path below the output) is one cracknet writes there."""
    return bool(PART_FILE.fullmatch(relative)) or relative.split("/", 1)[0] in OWN_FOLDERS


def check_output(output: str, inputs: tuple[str, ...] = ()) -> None:
    """Refuse, before anything is written, an output that overlaps the images or holds someone else's files.

    Results never share a folder with their inputs (a table's maintenance must never come near a photo), and
    a new output must be empty or hold only what cracknet itself writes there.
    """
    if "%" in output:  # deltalake decodes %xx in table paths, so such a table could not be read back
        raise CracknetError(f"The output {output} contains '%', which the table format cannot keep in a path; "
                            "choose a location without it.")
    for source in inputs:
        if source and storage.overlap(source, output):
            raise CracknetError(f"The output {output} overlaps the input {source}: results must lie outside the "
                                "images and must not contain them; choose another --output (with a manifest, "
                                "--input-prefix narrows where its images may lie).")
    if table_exists(output) or not storage.exists(output):
        return
    for page in storage.iter_versions(output):
        for uri, _ in page:
            if not own_file(storage.relative(uri, output)):
                raise CracknetError(f"{output} already holds files that are not a cracknet results table (such "
                                    f"as {uri}); give an empty location or an existing results table as --output.")


def open_table(uri: str):
    """The committed Delta table at ``uri``, or None when nothing was ever committed there."""
    from deltalake import DeltaTable

    refuse_old_layout(uri)
    if not table_exists(uri):
        return None
    try:
        return DeltaTable(_table_uri(uri), storage_options=storage.delta_options(uri))
    except Exception as exc:  # deltalake's own errors (damaged log, store failures) carry no common base class
        raise CracknetError(f"Cannot open the results table {uri}: {storage.reason(exc)}") from None


def _table_uri(uri: str) -> str:
    return uri if storage.is_s3(uri) else storage.absolute(uri)


# ---------------------------------------------------------------------------------------------------
# Writing: Parquet files from tasks, one commit from the driver


def part_table(images: dict, tiles: list, threshold: float, model_id: str, run_id: str, scored_at: str,
               metadata: dict) -> pa.Table:
    """One file's rows. ``images`` holds per-image arrays (image_uri, version, width, height, error,
    crack_probability, tiles_scored; from a model with a mask decoder also ``cracks``: JSON lists of
    ``geometry.measure``'s cracks, ``severity`` (the worst), ``mm_per_pixel`` and ``mask_uri``); ``tiles`` per
    image a list of
    (x, y, w, h, probability), or None."""
    from datetime import datetime

    import numpy as np

    n = len(images["image_uri"])
    errors = [e if isinstance(e, str) and e else None for e in images["error"]]
    ok = np.array([e is None for e in errors], dtype=bool)
    kinds = images.get("error_kind", [None] * n)  # none: an error of unknown kind, tried again like a transient one
    kinds = [k if e is not None and isinstance(k, str) and k else None for e, k in zip(errors, kinds)]
    probs = np.asarray(images["crack_probability"], dtype=np.float32)
    tile_rows = [None if not good else [dict(zip(TILE.names, t)) for t in image_tiles or []]
                 for good, image_tiles in zip(ok, tiles)]
    table = pa.table({
        "image_uri": pa.array(list(images["image_uri"]), pa.string()),
        "version": pa.array(list(images["version"]), pa.string()),
        "crack_probability": pa.array(probs, pa.float32(), mask=~ok),
        "is_crack": pa.array(probs >= threshold, pa.bool_(), mask=~ok),
        "tiles_scored": pa.array(np.where(ok, images["tiles_scored"], 0), pa.int32()),
        "width": pa.array(images["width"], pa.int32(), mask=~ok),
        "height": pa.array(images["height"], pa.int32(), mask=~ok),
        "error": pa.array(errors, pa.string()),
        "model_id": pa.array([model_id] * n, pa.string()),
        "run_id": pa.array([run_id] * n, pa.string()),
        "scored_at": pa.array([datetime.fromisoformat(scored_at)] * n, pa.timestamp("us", tz="UTC")),
        "tiles": pa.array(tile_rows, pa.list_(TILE)),
        "error_kind": pa.array(kinds, pa.string()),
        **geometry_columns(images, ok),
        **{name: pa.array(np.asarray(images.get(name, np.full(n, np.nan)), dtype=np.float32), pa.float32(),
                          mask=~ok | np.isnan(np.asarray(images.get(name, np.full(n, np.nan)), dtype=np.float32)))
           for name in IMAGE_STATISTICS},
        **place_columns([p if good else None for p, good in zip(images.get("photo", [None] * n), ok)], FILE_SCHEMA),
    }, schema=FILE_SCHEMA)
    return table.replace_schema_metadata({"cracknet": json.dumps(metadata)})


def write_part(table: pa.Table, output: str, run_id: str, run_date: str) -> dict:
    """Write one Parquet file under the table (not yet part of it); return what its commit needs."""
    part = write_file(table, output, f"{PARTITION}={run_date}/part-{run_id}-{uuid.uuid4().hex[:12]}.parquet")
    return {**part, "errors": table.num_rows - table.column("error").null_count, "run_date": run_date,
            "stats": file_stats(table)}


def write_file(table: pa.Table, location: str, path: str) -> dict:
    """Write ``table`` as the Parquet file ``path`` below a table's ``location``; what an AddAction needs."""
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", row_group_size=64 * 1024)
    data = buffer.getvalue()
    storage.write_bytes(storage.join(location, path), data)
    return {"path": path, "size": len(data), "rows": table.num_rows, "modification_time": int(time.time() * 1000)}


def file_stats(table: pa.Table) -> str:
    """Delta's per-file statistics (row count, min/max, null counts): what lets readers and the nightly
    planner skip files whose image_uri range or model cannot match."""
    mins, maxs, nulls = {}, {}, {}
    for name in STATS_COLUMNS:
        column = table.column(name)
        nulls[name] = column.null_count
        if column.null_count < len(column):
            low, high = pc.min_max(column).values()
            mins[name], maxs[name] = low.as_py(), high.as_py()
    for name in ("error", "error_kind", "is_crack", "width", "height", "scored_at"):
        if name in table.column_names:
            nulls[name] = table.column(name).null_count
    return json.dumps({"numRecords": table.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls})


@dataclass(frozen=True)
class TableKind:
    """What a Delta table cracknet keeps is made of: the results, or the runs table beside them."""

    schema: pa.Schema
    partition_by: tuple[str, ...]
    name: str
    description: str
    added_columns: tuple[str, ...] = ()


RESULTS = TableKind(SCHEMA, (PARTITION,), TABLE_NAME,
                    "cracknet crack predictions: one row per scored image (see cracknet's README)", ADDED_COLUMNS)


def commit(output: str, parts: list[dict], run_id: str, metadata: dict,
           before: Callable[[], None] = lambda: None, kind: TableKind = RESULTS) -> int:
    """Add ``parts`` to the table in one Delta commit (creating the table first if needed); returns the version.

    Idempotent: when a commit's answer is lost and the log shows this run's commit, that counts as done,
    so a retried request never commits a run twice. ``before`` runs right before each attempt (the lease check).
    """
    from deltalake import CommitProperties, DeltaTable
    from deltalake.transaction import AddAction

    uri, options = _table_uri(output), storage.delta_options(output)
    actions = [AddAction(path=p["path"], size=int(p["size"]),
                         partition_values={k: p[k] for k in kind.partition_by},
                         modification_time=int(p["modification_time"]), data_change=True, stats=p.get("stats"))
               for p in parts]
    custom = {f"cracknet.{k}": json.dumps(v) for k, v in metadata.items() if k != "run_id"}
    properties = CommitProperties(custom_metadata={**custom, "cracknet.run_id": run_id}, max_commit_retries=0)
    last: Exception | None = None
    for _ in range(COMMIT_ATTEMPTS):
        before()
        try:
            table = open_table(output) or DeltaTable.create(
                uri, kind.schema, mode="ignore", partition_by=list(kind.partition_by) or None, name=kind.name,
                description=kind.description, configuration=TABLE_CONFIGURATION, storage_options=options)
            table = _with_added_columns(table, kind)
            table.create_write_transaction(actions, mode="append", schema=table.schema(),
                                           partition_by=list(kind.partition_by) or None, commit_properties=properties)
            table.update_incremental()
            return table.version()
        except CracknetError:
            raise
        except Exception as exc:  # a lost answer, a concurrent writer, a store outage: look before retrying
            last = exc
            found = _committed_version(output, run_id)
            if found is not None:
                return found
    # Every attempt failed and none of them landed: the store (or the way to it) is failing; retry later.
    raise StorageUnavailable(f"Cannot commit run {run_id} to {output}: {storage.reason(last)}")


def _with_added_columns(table, kind: TableKind):
    """The table with every column of today's schema (a table made by an older release gains the new ones,
    null in its older files)."""
    from deltalake.schema import Field

    have = {f.name for f in table.schema().fields}
    missing = [name for name in kind.added_columns if name not in have]
    if not missing:
        return table
    table.alter.add_columns([Field.from_arrow(kind.schema.field(name)) for name in missing])
    table.update_incremental()
    return table


def _committed_version(output: str, run_id: str, depth: int = 20) -> int | None:
    """The version at which ``run_id`` was committed, looking at the newest ``depth`` commits."""
    try:
        table = open_table(output)
        for entry in table.history(depth) if table else []:
            if entry.get("cracknet.run_id") == run_id:
                return int(entry["version"])
    except Exception:  # noqa: BLE001 - cannot tell: the caller retries, and a retry finds it then
        return None
    return None


def commit_metadata(output: str, run_id: str) -> dict | None:
    """The ``cracknet.*`` commit metadata of a committed run (None when the run never committed)."""
    table = open_table(output)
    for entry in table.history() if table else []:
        if entry.get("cracknet.run_id") == run_id:
            return {k[len("cracknet."):]: (v if k == "cracknet.run_id" else json.loads(v))
                    for k, v in entry.items() if k.startswith("cracknet.")}
    return None


# ---------------------------------------------------------------------------------------------------
# Reading


def dataset(uri: str):
    """The committed table as a pyarrow dataset (an empty table when nothing was committed yet)."""
    import pyarrow.fs as pafs

    table = open_table(uri)
    if table is None:
        return pa.table({f.name: pa.array([], f.type) for f in SCHEMA})
    fs, base = storage.resolve(uri)
    stored = _partitioned_only(table, table.to_pyarrow_dataset(filesystem=pafs.SubTreeFileSystem(base, fs)))
    missing = [SCHEMA.field(name) for name in ADDED_COLUMNS if name not in stored.schema.names]
    # A table older than some columns reads them as nulls (its files lack them; Parquet fills them in).
    return stored.replace_schema(pa.schema(list(stored.schema) + missing)) if missing else stored


def _partitioned_only(table, stored):
    """``stored`` with each file known by its partition (its run_date) and by the ranges the log holds for its
    key columns (``PRUNING_COLUMNS``), and nothing else.

    deltalake turns a file's logged statistics into a guarantee about its rows; where the log counts a column's
    nulls but gives no minimum and maximum (this table logs those for ``STATS_COLUMNS`` only), its guarantee reads
    ``width >= null``, and a filter on that column (``WHERE width > 10``, ``scored_at >= ...``) then skips every
    file and returns nothing. The ranges kept here still let a filter on a run, a model or an image skip the files
    that cannot hold it without opening them."""
    import pyarrow.dataset as ds

    columns = ["path", f"partition.{PARTITION}"] + [f"{end}.{c}" for c in PRUNING_COLUMNS for end in ("min", "max")]
    actions = pa.table(table.get_add_actions(flatten=True))
    actions = actions.select([c for c in columns if c in actions.column_names]).to_pylist()
    fragments = []
    for a in actions:
        known = ds.field(PARTITION) == pa.scalar(a[f"partition.{PARTITION}"], pa.date32())
        for c in PRUNING_COLUMNS:
            low, high = a.get(f"min.{c}"), a.get(f"max.{c}")
            if low is not None and high is not None:
                known = known & (ds.field(c) >= low) & (ds.field(c) <= high)
        fragments.append(stored.format.make_fragment(a["path"], stored.filesystem, partition_expression=known))
    return ds.FileSystemDataset(fragments, stored.schema, stored.format, stored.filesystem)


# Never-null text columns whose logged ranges may prune files (a float's logged bound can differ from the
# float32 it stands for by a rounding, so crack_probability is left out).
PRUNING_COLUMNS = ("image_uri", "version", "model_id", "run_id")


MASK_HASH = 12
MASK_FILE = re.compile(r".*\.[0-9a-f]{%d}\.png" % MASK_HASH)  # what mask_name makes: compaction deletes only these


def mask_name(uri: str, version: str, root: str) -> str:
    """A mask's name: the image's path below the input made safe (``storage.name_below``: it stays inside the masks'
    location), then a hash of the image's full URI and version, as PNG. No two images share a mask (``x.jpg`` and
    ``x.JPG``, ``a//b.jpg`` and ``a/b.jpg``), and a new version of a photo gets a mask of its own."""
    stem = posixpath.splitext(storage.name_below(uri, root))[0] or "outside-input"
    key = "\n".join((uri, version)).encode()
    return f"{stem}.{storage.content_hash(key)[:MASK_HASH]}.png"


