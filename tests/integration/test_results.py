"""The results table on its own (no Ray): Delta commits read by deltalake, DuckDB and pyarrow; the nightly
plan as an anti-join with file pruning; inputs from manifests and S3 Inventory reports; the views; compaction."""

from __future__ import annotations

import json
from datetime import timedelta

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import BUCKET
from deltalake import DeltaTable
from helpers import DAY, commit_run, planned, write_inventory

from cracknet import storage
from cracknet.cli import main as cli_main
from cracknet.errors import CracknetError
from cracknet.score import inputs, planning
from cracknet.storage.lease import Lease
from cracknet.table import query, results
from cracknet.table.compact import compact
from cracknet.table.query import render, run_query

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
    assert rows.schema.field("tiles").type == pa.list_(results.TILE)

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


def test_compact_on_a_location_without_results_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli_main(["compact", "--results", str(tmp_path / "empty")]) == 2
    assert "holds no results table" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# Planning


def test_the_plan_is_the_listing_minus_what_this_model_committed(tmp_path):
    output = str(tmp_path / "results")
    commit_run(output, ["s3://s/a.jpg", "s3://s/b.jpg", "s3://s/c.jpg"], versions=["1", "1", "1"])
    commit_run(output, ["s3://s/d.jpg"], model_id="model-b", run_id="run-b", versions=["1"])
    listing = [("s3://s/a.jpg", "1"),      # scored at this version: skipped
               ("s3://s/b.jpg", "2"),      # changed since: scored again
               ("s3://s/c.jpg", ""),       # no version given, scored at some version: skipped
               ("s3://s/d.jpg", "1"),      # scored by another model only: scored
               ("s3://s/e.jpg", ""),       # new
               ("s3://s/e.jpg", ""),       # listed twice: scored once
               ("s3://s/f.jpg", "7")]
    plan, todo = planned(output, listing)
    assert (plan["listed"], plan["todo"]) == (6, 4)
    assert todo == [("s3://s/b.jpg", "2"), ("s3://s/d.jpg", "1"), ("s3://s/e.jpg", ""), ("s3://s/f.jpg", "7")]

    # Another model has scored nothing here: everything is to do.
    assert planned(output, listing, model_id="model-c")[0]["todo"] == 6


def test_the_plan_reads_only_committed_files_whose_statistics_can_match(tmp_path):
    output = str(tmp_path / "results")
    for night in ("2026-11-21", "2026-11-22", "2026-11-23"):
        commit_run(output, [f"s3://survey/{night}/img-{i:03d}.jpg" for i in range(50)], run_id=night, files=2)
    commit_run(output, [f"s3://survey/2026-11-23/img-{i:03d}.jpg" for i in range(50)], model_id="model-b",
               run_id="other-model")
    tonight = [(f"s3://survey/2026-11-23/img-{i:03d}.jpg", "v1") for i in range(60)]
    plan, todo = planned(output, tonight)
    assert (plan["history_files"], plan["history_files_read"]) == (7, 2)  # only that night's, only this model's
    assert [u for u, _ in todo] == [f"s3://survey/2026-11-23/img-{i:03d}.jpg" for i in range(50, 60)]
    assert len(plan["files"]) == 10  # small plans are split so that Ray reads them in parallel


def test_a_manifest_keeps_each_row_with_its_own_version(tmp_path):
    manifest = tmp_path / "tonight.csv"
    manifest.write_text("image_uri,version\na.jpg,va\n,vb\nc.jpg,vc\nd.jpg,\n")
    rows = inputs.listing(str(manifest), str(tmp_path)).read_all().to_pylist()
    # A relative path in a local manifest is relative to the manifest's folder.
    assert rows == [{"image_uri": str(tmp_path / "a.jpg"), "version": "va"},
                    {"image_uri": str(tmp_path / "c.jpg"), "version": "vc"},
                    {"image_uri": str(tmp_path / "d.jpg"), "version": ""}]
    parquet = tmp_path / "tonight.parquet"
    pq.write_table(pa.table({"uri": ["/abs/x.jpg", None], "version": [123, 456]}), parquet)
    assert inputs.listing(str(parquet), str(tmp_path)).read_all().to_pylist() == \
        [{"image_uri": "/abs/x.jpg", "version": "123"}]


def test_a_broken_manifest_stops_the_plan_with_its_own_sentence(tmp_path):
    manifest = tmp_path / "tonight.parquet"
    manifest.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(CracknetError, match="is not a readable manifest"):
        planning.plan(inputs.listing(str(manifest), str(tmp_path)), str(tmp_path / "out"), "m", str(tmp_path / "s"))


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


# ---------------------------------------------------------------------------------------------------
# Views


def test_current_shows_the_newest_row_per_image_after_a_second_model(tmp_path):
    output = str(tmp_path / "results")
    uris = [f"/survey/bridge-{i % 2}/img-{i}.jpg" for i in range(6)]
    commit_run(output, uris, model_id="model-a", run_id="run-a", probabilities=[0.9] * 6)
    commit_run(output, uris[:4], model_id="model-b", run_id="run-b", when=DAY + timedelta(days=1),
               probabilities=[0.2] * 4)
    assert run_query(output, "SELECT count(*) AS n FROM images").to_pylist() == [{"n": 10}]
    current = {r["image_uri"]: r["model_id"] for r in run_query(output, "SELECT * FROM current").to_pylist()}
    assert current == {u: ("model-b" if i < 4 else "model-a") for i, u in enumerate(uris)}
    structures = run_query(output, "SELECT structure, images, cracks FROM structures ORDER BY 1").to_pylist()
    assert structures == [{"structure": "/survey/bridge-0", "images": 3, "cracks": 1},
                          {"structure": "/survey/bridge-1", "images": 3, "cracks": 1}]
    since = run_query(output, "SELECT image_uri FROM likely_cracks_since('2026-11-01')").column(0).to_pylist()
    assert sorted(since) == uris[4:]


def test_csv_output_keeps_every_digit(tmp_path):
    output = str(tmp_path / "results")
    commit_run(output, ["/s/a.jpg"], probabilities=[0.123456789])
    table = run_query(output, "SELECT image_uri, crack_probability, is_crack FROM images")
    assert render(table, "csv").splitlines() == ["image_uri,crack_probability,is_crack", '"/s/a.jpg",0.12345679,false']
    assert "0.1235" in render(table, "table")


def test_the_earlier_layout_is_refused_with_a_sentence(tmp_path):
    (tmp_path / "old" / "_manifests").mkdir(parents=True)
    with pytest.raises(CracknetError, match="earlier Parquet-and-manifest layout"):
        query.connect(str(tmp_path / "old"))


def test_the_log_is_checkpointed_so_opening_the_table_does_not_read_every_commit(tmp_path):
    output = str(tmp_path / "results")
    for night in range(11):
        commit_run(output, [f"/s/{night}.jpg"], run_id=f"run-{night}")
    log = tmp_path / "results" / "_delta_log"
    assert [p.name for p in log.glob("*.checkpoint.parquet")] == ["00000000000000000009.checkpoint.parquet"]
    assert json.loads((log / "_last_checkpoint").read_text())["version"] == 9
    assert run_query(output, "SELECT count(*) AS n FROM images").to_pylist() == [{"n": 11}]
