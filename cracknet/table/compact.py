"""Maintenance of the results table: merge small files, then delete files nothing references any more.

    cracknet compact --results s3://survey/results                  # weekly, after a scoring run
    cracknet compact --results s3://survey/results --retention-hours 24

Each night adds a few files per run; compaction (Delta's optimize) rewrites the
small files of each ``run_date`` partition into large ones in one commit, rows
unchanged. Vacuum then deletes files no longer referenced that are older than
the retention period: files replaced by compaction (kept that long for readers
of older snapshots and time travel) and files written by runs that died before
committing. It holds the scoring lease throughout, so it never deletes the
not-yet-committed files of a live run.

Crack masks have the same lifecycle: a mask no kept row names (each photo's newest
row by each model keeps its mask; a superseded version's mask, or one written by a
run that died, is named by none) is deleted once older than the retention period.

Only files cracknet wrote are ever deleted (``run_date=*/part-*.parquet``, masks by
their names in the --masks locations runs recorded, and the plans of dead runs):
Delta's own vacuum would delete *every* unreferenced file
under the folder, photos, reports and notes a person keeps there included.
Delta lists the candidates; cracknet deletes those of its own naming.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import unquote

from cracknet import storage
from cracknet.config import REQUIRED, option
from cracknet.errors import CracknetError
from cracknet.numbers import LEASE_SECONDS, Range, check_fields, checked
from cracknet.storage.lease import DEFAULT_LEASE_SECONDS, Lease
from cracknet.table import query, results, runs

DEFAULT_RETENTION_HOURS = 168  # Delta's own default (delta.deletedFileRetentionDuration: one week)


RETENTION_HOURS = Range(0, 100 * 365 * 24)


@dataclass(frozen=True)
class CompactConfig:
    """``cracknet compact``: merge the results table's small files and vacuum unreferenced ones."""
    results: str = option(REQUIRED, "the scoring output: a folder or s3:// prefix")
    retention_hours: int = option(DEFAULT_RETENTION_HOURS, "keep unreferenced files younger than this, for readers "
                                  f"of older snapshots (default: {DEFAULT_RETENTION_HOURS}, Delta's one week)",
                                  range=RETENTION_HOURS)
    lease_seconds: float = option(DEFAULT_LEASE_SECONDS, "how long the lease on the output lasts without renewal "
                                                         "(as for score)", range=LEASE_SECONDS)

    def __post_init__(self):
        check_fields(self)


def compact(uri: str, retention_hours: int = DEFAULT_RETENTION_HOURS,
            lease_seconds: float = DEFAULT_LEASE_SECONDS) -> dict:
    """Compact and vacuum the table at ``uri``; returns file counts before and after, and what was deleted."""
    from deltalake import CommitProperties, WriterProperties

    checked("--retention-hours", retention_hours, RETENTION_HOURS)
    checked("--lease-seconds", lease_seconds, LEASE_SECONDS)  # before anything is read or written
    uri = storage.canonical(uri)
    started = datetime.now(timezone.utc)
    run_id = started.strftime("compact-%Y%m%dT%H%M%SZ")
    if not results.table_exists(uri):  # before the lease: a wrong --results must not gain a _lease file
        raise CracknetError(f"{uri} holds no results table; give the --output of a `cracknet score` run.")
    with Lease(uri, owner={"run_id": run_id, "job": "compaction"}, seconds=lease_seconds) as lease:
        table = results.open_table(uri)
        if table is None:
            raise CracknetError(f"{uri} holds no results table; give the --output of a `cracknet score` run.")
        for source in runs.inputs(uri):  # an output scored before outputs were checked may hold its own input
            if storage.overlap(source, uri):
                raise CracknetError(f"The results table {uri} overlaps the input {source} of its own runs; compaction "
                                    "is refused there. Score into a location outside the images, then compact that.")
        storage.delete_tree(storage.join(uri, results.STAGING))  # plans of dead runs; none is live while we hold this
        before = len(table.file_uris())
        try:
            merged = table.optimize.compact(writer_properties=WriterProperties(compression="ZSTD"),
                                            commit_properties=CommitProperties(
                                                custom_metadata={"cracknet.run_id": run_id}))
            lease.check()
            deleted = vacuum_own_files(table, uri, retention_hours)
            table.cleanup_metadata()
            lease.check()
            masks = vacuum_masks(uri, retention_hours, started)
        except CracknetError:
            raise
        except Exception as exc:  # deltalake's errors share no base class
            raise CracknetError(f"Compacting {uri} failed: {storage.reason(exc)}") from None
        table = results.open_table(uri)
        after = len(table.file_uris())
        runs.record(uri, [runs.row(run_id, "compaction", {"started_at": started}, {}, datetime.now(timezone.utc),
                                   table.version())])
    return {"results": uri, "files_before": before, "files_after": after, "files_added": merged["numFilesAdded"],
            "files_removed": merged["numFilesRemoved"], "files_deleted": len(deleted), "masks_deleted": len(masks),
            "retention_hours": retention_hours}


def vacuum_own_files(table, uri: str, retention_hours: int) -> list[str]:
    """Delete the unreferenced files older than the retention that cracknet itself wrote; return their URIs."""
    candidates = table.vacuum(retention_hours=retention_hours, dry_run=True, enforce_retention_duration=False,
                              full=True)
    deleted = []
    for relative in map(unquote, candidates):  # paths below the table, as its log writes them
        # Delta lists every unreferenced file its log still names, also those deleted by an earlier vacuum: only
        # files that were there count.
        if results.PART_FILE.fullmatch(relative) and storage.delete_file(storage.join(uri, relative)):
            deleted.append(storage.join(uri, relative))
    return deleted


# The rows whose masks are kept: each photo's newest row by each model (a model put back in force finds its masks).
KEPT_MASKS_SQL = """
SELECT mask_uri FROM images WHERE mask_uri IS NOT NULL AND mask_uri <> ''
QUALIFY row_number() OVER (PARTITION BY image_uri, model_id ORDER BY scored_at DESC, run_id DESC) = 1
"""


def vacuum_masks(uri: str, retention_hours: int, now: datetime) -> list[str]:
    """Delete the crack masks that no kept row names (a superseded version of a photo, a run that died before its
    commit) once they are older than the retention; return their URIs. Only files named as scoring names masks
    (``results.MASK_FILE``) in the --masks locations the table's runs recorded are touched, and never one inside
    an input of those runs."""
    from datetime import timedelta

    import pyarrow as pa

    from cracknet.table.results import MASK_FILE

    sources = runs.inputs(uri)
    locations = [m for m in runs.mask_locations(uri) if not any(storage.overlap(m, s) for s in sources)]
    if not locations:
        return []
    con = query.connect(uri)
    con.execute(f"CREATE TEMP TABLE kept AS {KEPT_MASKS_SQL}").fetchall()
    cutoff = now - timedelta(hours=retention_hours)
    deleted = []
    for location in locations:
        for page in storage.iter_modified(location):
            old = [u for u, modified in page if modified <= cutoff and MASK_FILE.fullmatch(u)]
            if not old:
                continue
            con.register("listed", pa.table({"uri": old}))
            unnamed = [r[0] for r in con.execute("SELECT uri FROM listed ANTI JOIN kept ON uri = mask_uri").fetchall()]
            con.unregister("listed")
            deleted += [u for u in unnamed if storage.delete_file(u)]
    return deleted
