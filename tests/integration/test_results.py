"""The results table on local disk and the S3 endpoint (no Ray): Delta commits read by deltalake, DuckDB and
pyarrow, uncommitted files and vacuum, compaction, and inputs from S3 Inventory reports. Its pure parts (the
plan, manifests, the views) are tests/unit/test_table.py."""

from __future__ import annotations

from datetime import timedelta

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import BUCKET
from deltalake import DeltaTable
from helpers import DAY, commit_run, write_inventory

from cracknet import storage
from cracknet.errors import CracknetError
from cracknet.score import inputs
from cracknet.storage.lease import Lease
from cracknet.table import results, schema
from cracknet.table.compact import compact
from cracknet.table.query import run_query

# ---------------------------------------------------------------------------------------------------
# The table as other engines see it


def test_a_committed_run_reads_the_same_in_deltalake_duckdb_and_pyarrow(store_root):
    output = storage.join(store_root, "results")
    uris = [f"s3://survey/bridge-{i % 3}/img-{i:03d}.jpg" for i in range(30)]
    version = commit_run(output, uris, files=3)
    table = DeltaTable(output, storage_options=storage.delta_options(output))
    assert table.version() == version == 1  # version 0 creates the table, version 1 is the run
    rows = table.to_pyarrow_table()
    assert rows.num_rows == 30 and set(rows.column("image_uri").to_pylist()) == set(uris)
    assert table.metadata().partition_columns == ["run_date"]
    assert rows.schema.field("tiles").type == pa.list_(schema.TILE)

    con = duckdb.connect()
    con.register("t", table.to_pyarrow_dataset())
    assert con.sql("SELECT count(DISTINCT image_uri), min(run_date) FROM t").fetchall() == [(30, DAY.date())]

    files = table.file_uris()
    assert len(files) == 3
    fs, _ = storage.resolve(output)
    plain = pa.concat_tables(pq.read_table(storage.resolve(f)[1], filesystem=fs) for f in files)
    assert plain.num_rows == 30 and pq.ParquetFile(storage.resolve(files[0])[1], filesystem=fs) \
        .metadata.row_group(0).column(0).compression == "ZSTD"

    commit = results.commit_metadata(output, "run-1")
    assert commit == {"run_id": "run-1", "model_id": "model-a"}


def test_an_uncommitted_file_is_invisible_and_vacuum_deletes_it(store_root):
    output = storage.join(store_root, "results")
    commit_run(output, [f"s3://s/a-{i}.jpg" for i in range(4)])
    rows = {"image_uri": ["s3://s/dead.jpg"], "version": ["v"], "width": [1], "height": [1], "error": [""],
            "crack_probability": [0.9], "tiles_scored": [1]}
    dead = results.write_part(results.part_table(rows, [[]], 0.5, "model-a", "dead", DAY.isoformat(), {}),
                              output, "dead", "2026-11-24")
    assert run_query(output, "SELECT count(*) AS n FROM images").to_pylist() == [{"n": 4}]
    assert storage.exists(storage.join(output, dead["path"]))
    done = compact(output, retention_hours=0)
    assert done["files_deleted"] == 1 and not storage.exists(storage.join(output, dead["path"]))
    assert run_query(output, "SELECT count(*) AS n FROM images").to_pylist() == [{"n": 4}]


def test_compaction_keeps_every_row_and_merges_the_files(store_root):
    output = storage.join(store_root, "results")
    expected = []
    for night in range(3):
        uris = [f"s3://survey/n{night}/img-{i:03d}.jpg" for i in range(40)]
        commit_run(output, uris, run_id=f"run-{night}", when=DAY + timedelta(days=night % 2), files=4)
        expected += uris
    before = DeltaTable(output, storage_options=storage.delta_options(output))
    assert len(before.file_uris()) == 12

    # While a scoring run holds the output, compaction (whose vacuum could delete its files) is refused.
    with Lease(output, owner={"run_id": "live", "job": "scoring"}, seconds=60):
        with pytest.raises(CracknetError, match="Another scoring run is writing to"):
            compact(output)

    done = compact(output, retention_hours=0)
    assert (done["files_before"], done["files_after"]) == (12, 2)  # one file per run_date partition
    assert done["files_deleted"] == 12
    table = DeltaTable(output, storage_options=storage.delta_options(output))
    assert sorted(table.to_pyarrow_table().column("image_uri").to_pylist()) == sorted(expected)
    assert len([u for u in storage.list_files(output) if u.endswith(".parquet") and "/run_date=" in u]) == 2
    assert sorted(run_query(output, "SELECT image_uri FROM images").column(0).to_pylist()) == sorted(expected)


# ---------------------------------------------------------------------------------------------------
# S3 Inventory reports


@pytest.mark.parametrize("fmt", ["CSV", "Parquet"])
def test_an_s3_inventory_report_lists_the_live_images_under_the_input_location(s3_endpoint, fmt):
    prefix = f"inventory-{fmt.lower()}"
    objects = [(f"{prefix}/survey/bridge a/é {i}.jpg", f"etag{i}", True, False) for i in range(5)] + [
        (f"{prefix}/survey/notes.txt", "n", True, False),           # not an image
        (f"{prefix}/survey/old.jpg", "o", False, False),            # an older version
        (f"{prefix}/survey/gone.jpg", "g", True, True),             # a delete marker
        (f"{prefix}/elsewhere/x.jpg", "x", True, False),            # outside the input location
    ]
    manifest = write_inventory(prefix, fmt, objects)
    assert inputs.kind_of(manifest) == "inventory"
    assert inputs.input_root(manifest, None) == f"s3://{BUCKET}"
    rows = inputs.listing(manifest, f"s3://{BUCKET}/{prefix}/survey").read_all().to_pylist()
    assert rows == [{"image_uri": f"s3://{BUCKET}/{prefix}/survey/bridge a/é {i}.jpg", "version": f"etag{i}"}
                    for i in range(5)]


def test_a_damaged_inventory_manifest_is_one_sentence(s3_endpoint):
    uri = f"s3://{BUCKET}/inventory-bad/manifest.json"
    storage.write_bytes(uri, b'{"files": []}')
    with pytest.raises(CracknetError, match="is not an S3 Inventory manifest"):
        inputs.listing(uri, f"s3://{BUCKET}")
