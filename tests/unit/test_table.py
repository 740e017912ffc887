"""The results table without Ray or a server: the nightly plan as an anti-join with file pruning, manifests, the
views and how query output reads, the log's checkpoints, and refusals of outputs that are not a cracknet table."""

from __future__ import annotations

import json
from datetime import timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import DAY, commit_run, planned

from cracknet.cli import main as cli_main
from cracknet.errors import CracknetError
from cracknet.score import inputs, planning
from cracknet.table import places, query, results, schema
from cracknet.table.query import render, run_query


def test_compact_on_a_location_without_results_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli_main(["compact", "--results", str(tmp_path / "empty")]) == 2
    assert "holds no results table" in capsys.readouterr().err


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


def test_every_view_still_works_on_a_locked_connection(tmp_path):
    import re

    output = str(tmp_path / "results")
    commit_run(output, ["s3://s/bridge/a.jpg", "s3://s/bridge/b.jpg"], errors=["", "unreadable"])
    con = query.connect(output)
    views = set(re.findall(r"CREATE VIEW (\w+)", query.VIEWS + places.SQL))
    macros = {"likely_cracks_since": "('2026-01-01')", "wider_than": "(0.5)", "tiles_above": "('s3://s/bridge/a.jpg', 0.0)"}
    assert set(re.findall(r"CREATE MACRO (\w+)", query.VIEWS)) == set(macros), "give each new macro an example here"
    assert len(views) >= 14 and "findings" in views
    described = set(re.findall(r"^    (\w+)", query.__doc__, re.M))
    assert views | set(macros) <= described, "describe every view in cracknet.table.query's docstring"
    for name in ["results", "runs", *sorted(views), *(name + args for name, args in macros.items())]:
        run_query(output, f"SELECT * FROM {name}", con=con)
    assert run_query(output, "SELECT count(*) AS n FROM current", con=con).to_pylist() == [{"n": 2}]


def test_table_output_shows_no_terminal_control_characters(tmp_path):
    output = str(tmp_path / "results")
    commit_run(output, ["s3://s/\x1b]0;owned\x07\x1b[2J.jpg"])
    shown = render(run_query(output, "SELECT image_uri FROM images"), "table")
    assert "\x1b" not in shown and "\x07" not in shown and "?]0;owned??[2J.jpg" in shown


def test_where_a_photo_was_taken_becomes_typed_columns_null_where_unknown_and_on_error_rows(tmp_path):
    photo = json.dumps({"latitude": 47.5, "longitude": -8.25, "altitude_m": 512.0,
                        "captured_at": "2026-11-23T09:15:30+00:00", "camera": "DJI FC6310", "focal_length_mm": 8.8,
                        "gimbal_pitch_deg": -90.0, "gimbal_yaw_deg": 45.5, "distance_m": 10.2,
                        "distance_source": "altitude, nadir"})
    rows = {"image_uri": ["a.jpg", "b.jpg", "c.jpg"], "version": ["v"] * 3, "width": [64] * 3, "height": [64] * 3,
            "error": ["", "", "unreadable"], "crack_probability": [0.9, 0.1, float("nan")], "tiles_scored": [1, 1, 0],
            "photo": [photo, "", photo]}
    table = results.part_table(rows, [[], [], None], 0.5, "model-a", "run-1", DAY.isoformat(), {})
    got = table.select(list(schema.PLACE_COLUMNS)).to_pylist()
    assert got[0]["latitude"] == 47.5 and got[0]["camera"] == "DJI FC6310"
    assert got[0]["captured_at"].isoformat() == "2026-11-23T09:15:30+00:00"
    assert got[0]["distance_source"] == "altitude, nadir" and got[0]["gimbal_pitch_deg"] == -90.0
    assert all(v is None for v in got[1].values()) and all(v is None for v in got[2].values())
    assert table.schema.field("latitude").type == pa.float64()


def test_a_filter_on_any_column_finds_its_rows(tmp_path):
    # The log keeps minimum and maximum for a few columns only; a filter on another (width, scored_at) must not
    # read a missing statistic as "no row can match" and skip every file.
    output = str(tmp_path / "results")
    commit_run(output, ["/s/a.jpg", "/s/b.jpg"], when=DAY)
    commit_run(output, ["/s/c.jpg"], run_id="run-2", when=DAY + timedelta(days=2))
    for sql, n in [("SELECT count(*) FROM images WHERE width > 10", 3),
                   ("SELECT count(*) FROM images WHERE height = 64 AND NOT is_crack", 2),
                   (f"SELECT count(*) FROM results WHERE scored_at >= TIMESTAMPTZ '{(DAY + timedelta(days=1)).date()}'", 1),
                   (f"SELECT count(*) FROM results WHERE run_date = DATE '{DAY.date()}'", 2)]:
        assert run_query(output, sql).column(0).to_pylist() == [n], sql
    # A filter on a run or an image still skips the files that cannot hold it, unopened
    import pyarrow.dataset as ds

    stored = results.dataset(output)
    assert len(list(stored.get_fragments(filter=ds.field("run_id") == "run-2"))) == 1
    assert len(list(stored.get_fragments(filter=ds.field("image_uri") == "/s/a.jpg"))) == 1
    assert len(list(stored.get_fragments(filter=ds.field("width") > 10))) == 2
