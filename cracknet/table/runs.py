"""The runs table: one row per scoring or compaction run, the home of every result's provenance.

    cracknet query --results s3://survey/results "SELECT run_id, model_id, threshold, scored FROM runs"

Each row of the results table names its ``run_id``; the run's row here says with
which model (id, folder, weights' SHA-256), threshold, preprocessing and tiling it
was scored, what was listed, scored and failed, and when. It is a Delta table of
its own under ``<output>/_runs`` (Delta's rule: a name starting with ``_`` is not
data of the table above it), so neither compaction, which rewrites the results'
files, nor the log clean-up, which drops commit metadata after 30 days, can lose
it. Rows are only ever appended, by the run holding the output's lease.

A scoring run writes its row right after its results commit, and also when it had
nothing to score: the newest scoring row names the model *in force*, which the
``current`` view prefers (see ``cracknet.table.results``). Should a run die between the
two commits, the next run restores its row from the results' commit metadata.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pyarrow as pa

from cracknet import storage
from cracknet.errors import CracknetError

RUNS = "_runs"
SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("job", pa.string()),                  # scoring or compaction
    ("model_id", pa.string()),
    ("model", pa.string()),                # the model folder the run loaded
    ("weights_sha256", pa.string()),
    ("threshold", pa.float64()),
    ("preprocessing", pa.string()),        # JSON: image_size, mean, std, source_size
    ("tile_size", pa.int32()),
    ("tile_overlap", pa.float64()),
    ("settings", pa.string()),             # JSON: precision, compile, pixel and byte limits, retry settings
    ("input", pa.string()),
    ("started_at", pa.timestamp("us", tz="UTC")),
    ("ended_at", pa.timestamp("us", tz="UTC")),
    ("listed", pa.int64()),
    ("scored", pa.int64()),                # images written by the run, error rows included
    ("errors", pa.int64()),
    ("results_version", pa.int64()),       # the results table's version of the run's commit; null: none
    ("cracknet_version", pa.string()),
    # Added since: null in older rows.
    ("model_version", pa.string()),        # the registered version the run resolved, "name/version" (models:/)
    ("monitoring", pa.string()),           # JSON: what monitoring judges a night by (cracknet.score.monitor.run_record)
    ("alerts", pa.string()),               # JSON: the monitoring rules that fired, [] when none did
])
ADDED_COLUMNS = ("model_version", "monitoring", "alerts")


def _kind():
    """The runs table as a kind of cracknet table (committed by ``results.commit``, as the results are)."""
    from cracknet.table.results import TableKind

    return TableKind(SCHEMA, (), "cracknet_runs", "cracknet runs: one row per scoring or compaction run",
                     ADDED_COLUMNS)


def uri_of(output: str) -> str:
    return storage.join(output, RUNS)


def open_runs(output: str):
    """The runs table under ``output``, or None when no run recorded itself there yet."""
    from cracknet.table.results import open_table

    return open_table(uri_of(output))


def row(run_id: str, job: str, provenance: dict, counts: dict, ended_at: datetime,
        results_version: int | None, monitoring: dict | None = None, alerts: list | None = None) -> dict:
    """One run's row, from what the run carried (``provenance``, as in its commit metadata), what it did and, for
    a scoring run, what monitoring found (``cracknet.score.monitor``)."""
    def stamp(value):
        return datetime.fromisoformat(value) if isinstance(value, str) else value

    registered = provenance.get("registry") or {}

    return {
        "run_id": run_id, "job": job,
        **{k: provenance.get(k) for k in ("model_id", "model", "weights_sha256", "input", "cracknet_version")},
        "threshold": None if provenance.get("threshold") is None else float(provenance["threshold"]),
        "preprocessing": None if provenance.get("preprocessing") is None else json.dumps(provenance["preprocessing"],
                                                                                          sort_keys=True),
        "tile_size": provenance.get("tile_size"), "tile_overlap": provenance.get("tile_overlap"),
        "settings": json.dumps(provenance.get("settings", {}), sort_keys=True),
        "started_at": stamp(provenance.get("started_at")) or ended_at, "ended_at": ended_at,
        **{k: int(counts.get(k, 0)) for k in ("listed", "scored", "errors")},
        "results_version": results_version,
        "model_version": f"{registered['name']}/{registered['version']}" if registered else None,
        "monitoring": None if monitoring is None else json.dumps(monitoring, sort_keys=True),
        "alerts": None if alerts is None else json.dumps(alerts, sort_keys=True),
    }


def record(output: str, rows: list[dict]) -> None:
    """Append rows (see ``row``) in one commit, exactly once however often it is retried; the caller holds the
    output's lease. Written the way the results are: a Parquet file, then one Delta commit naming it."""
    from cracknet.table import results

    if not rows:
        return
    commit_id = f"runs-{uuid.uuid4().hex}"
    part = results.write_file(pa.Table.from_pylist(rows, schema=SCHEMA), uri_of(output), f"part-{commit_id}.parquet")
    results.commit(uri_of(output), [part], commit_id, {}, kind=_kind())


def read(output: str) -> pa.Table:
    """Every run recorded under ``output`` (an empty table when none is)."""
    table = open_runs(output)
    if table is None:
        return SCHEMA.empty_table()
    stored = table.to_pyarrow_table()
    for name in SCHEMA.names:  # a table older than some columns reads them as nulls
        if name not in stored.column_names:
            stored = stored.append_column(SCHEMA.field(name), pa.nulls(stored.num_rows, SCHEMA.field(name).type))
    return stored.select(SCHEMA.names)


def restore_missing(output: str, history: list[dict]) -> int:
    """Rows for results commits (``history``: entries of the results log) that have none here: a run that died
    between its two commits. Returns how many were restored."""
    known = set(read(output).column("run_id").to_pylist())
    missing = []
    for entry in history:
        run_id = entry.get("cracknet.run_id")
        if not run_id or run_id in known or "cracknet.model_id" not in entry:
            continue
        meta = {k[len("cracknet."):]: json.loads(v) for k, v in entry.items()
                if k.startswith("cracknet.") and k != "cracknet.run_id"}
        ended = datetime.fromtimestamp(int(entry.get("timestamp", 0)) / 1000, timezone.utc)
        missing.append(row(run_id, "scoring", meta, meta.get("summary", {}), ended, int(entry["version"])))
        known.add(run_id)
    record(output, missing)
    return len(missing)


def first_committed(output: str, model_id: str) -> dict | None:
    """The earliest recorded scoring run of ``model_id``: its threshold and preprocessing, or None."""
    import pyarrow.compute as pc

    runs = read(output)
    runs = runs.filter(pc.and_(pc.equal(runs.column("model_id"), model_id), pc.equal(runs.column("job"), "scoring")))
    if not runs.num_rows:
        return None
    return runs.sort_by("started_at").slice(0, 1).to_pylist()[0]


def check_model(output: str, card: dict) -> None:
    """Refuse a model whose card scores differently from the way its id first did under ``output`` (a card
    edited in place, from before ids covered the threshold and preprocessing)."""
    first = first_committed(output, card["model_id"])
    if first is None:
        return
    now = {"threshold": float(card["threshold"]), "preprocessing": json.dumps(card["preprocessing"], sort_keys=True)}
    changed = [k for k in now if first[k] != now[k]]
    if changed:
        raise CracknetError(f"Model {card['model_id']} was first committed to {output} by run {first['run_id']} with "
                            f"another {' and '.join(changed)} than its card now says; one id must mean one way of "
                            "scoring, so save the changed model as a new one.")


def mask_locations(output: str) -> list[str]:
    """The --masks locations scoring runs recorded in their settings."""
    found = {json.loads(text or "{}").get("masks") for text in read(output).column("settings").to_pylist()}
    return sorted(m for m in found if m)


def inputs(output: str) -> list[str]:
    """The input locations scoring runs recorded (compaction refuses a table that overlaps any of them)."""
    return sorted({u for u in read(output).column("input").to_pylist() if u})
