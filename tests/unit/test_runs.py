"""Error rows that heal, and provenance that survives (no Ray): transient errors are planned again a bounded
number of times, permanent ones are not (until --retry-errors); the runs table keeps every run's settings
through compaction; ``current`` follows the model in force and prefers a verdict over a transient failure."""

from __future__ import annotations

from datetime import datetime, timedelta

import pyarrow.parquet as pq
import pytest
from helpers import DAY, commit_run, planned

from cracknet import storage
from cracknet.errors import CracknetError
from cracknet.score import planning
from cracknet.table import results, runs, schema
from cracknet.table.compact import compact
from cracknet.table.query import run_query

DENIED = "Cannot read s3://s/a.jpg: AccessDenied (the endpoint refused the credentials: ...)"


def scoring_row(run_id: str, model_id: str, when: datetime, threshold: float = 0.5, version: int | None = 1) -> dict:
    provenance = {"model_id": model_id, "model": f"/models/{model_id}", "weights_sha256": "f" * 64,
                  "threshold": threshold, "preprocessing": {"image_size": 32}, "tile_size": 96, "tile_overlap": 0.25,
                  "settings": {"fp32": False}, "input": "s3://s/", "started_at": when.isoformat(),
                  "cracknet_version": "test"}
    return runs.row(run_id, "scoring", provenance, {"listed": 3, "scored": 3}, when + timedelta(minutes=5), version)


def test_transient_errors_are_planned_again_a_bounded_number_of_times(tmp_path):
    output = str(tmp_path / "results")
    listing = [("s3://s/a.jpg", "v1"), ("s3://s/b.jpg", "v1"), ("s3://s/c.jpg", "v1"), ("s3://s/d.jpg", "v1")]
    commit_run(output, [u for u, _ in listing], errors=[DENIED, "the file is not a recognised image", "",
                                                           "unexpected MemoryError: "],
               kinds=["transient", "permanent", "", ""])
    plan, todo = planned(output, listing)
    assert sorted(u for u, _ in todo) == ["s3://s/a.jpg", "s3://s/d.jpg"]  # not the scored, not the permanent
    assert (plan["errors_retried"], plan["errors_given_up"]) == (2, 0)

    # An error row of an older release (no kind) is tried again like a transient one.
    legacy = str(tmp_path / "legacy")
    commit_run(legacy, ["s3://s/a.jpg"], errors=["Cannot read s3://s/a.jpg: AccessDenied"])
    assert [u for u, _ in planned(legacy, [("s3://s/a.jpg", "v1")])[1]] == ["s3://s/a.jpg"]

    # Two more nights of AccessDenied for a.jpg: three in all, then it is left to the failures view.
    for night in (2, 3):
        commit_run(output, ["s3://s/a.jpg"], run_id=f"run-{night}", when=DAY + timedelta(days=night),
                   errors=[DENIED], kinds=["transient"])
    plan, todo = planned(output, listing)
    assert [u for u, _ in todo] == ["s3://s/d.jpg"] and plan["errors_given_up"] == 1

    # --retry-errors tries every error row again, permanent ones included.
    plan = planning.plan(_listing(listing), output, "model-a", storage.join(output, "_staging", "retry"),
                        retry_errors=True)
    todo = sorted(r["image_uri"] for f in plan["files"] for r in pq.read_table(f).to_pylist())
    assert todo == ["s3://s/a.jpg", "s3://s/b.jpg", "s3://s/d.jpg"]


def _listing(rows):
    from helpers import listing_of

    return listing_of(rows)


def test_current_prefers_the_model_in_force_then_a_verdict_over_a_transient_error(tmp_path):
    output = str(tmp_path / "results")
    uris = ["s3://s/a.jpg", "s3://s/b.jpg"]
    commit_run(output, uris, model_id="model-a", run_id="a-1", probabilities=[0.9, 0.1])
    runs.record(output, [scoring_row("a-1", "model-a", DAY)])
    # The next night, model A could not read b.jpg: its verdict of the night before still stands.
    commit_run(output, ["s3://s/b.jpg"], model_id="model-a", run_id="a-2", when=DAY + timedelta(days=1),
               errors=[DENIED], kinds=["transient"])
    runs.record(output, [scoring_row("a-2", "model-a", DAY + timedelta(days=1))])

    def current():
        return {r["image_uri"]: (r["model_id"], r["error"] is None)
                for r in run_query(output, "SELECT * FROM current").to_pylist()}

    assert current() == {"s3://s/a.jpg": ("model-a", True), "s3://s/b.jpg": ("model-a", True)}
    # Model B takes over ...
    commit_run(output, uris, model_id="model-b", run_id="b-1", when=DAY + timedelta(days=2))
    runs.record(output, [scoring_row("b-1", "model-b", DAY + timedelta(days=2))])
    assert {m for m, _ in current().values()} == {"model-b"}
    # ... and is rolled back: A's run scores nothing new, but records itself, and A's rows are current again.
    runs.record(output, [scoring_row("a-3", "model-a", DAY + timedelta(days=3), version=None)])
    assert current() == {"s3://s/a.jpg": ("model-a", True), "s3://s/b.jpg": ("model-a", True)}
    assert run_query(output, "SELECT model_id FROM in_force").to_pylist() == [{"model_id": "model-a"}]


def test_provenance_survives_compaction_in_the_runs_table(tmp_path):
    output = str(tmp_path / "results")
    for night in range(3):
        run_id = f"run-{night}"
        commit_run(output, [f"s3://s/{night}-{i}.jpg" for i in range(4)], run_id=run_id,
                   when=DAY + timedelta(days=night))
        runs.record(output, [scoring_row(run_id, "model-a", DAY + timedelta(days=night), threshold=0.25)])
        commit_run(output, [f"s3://s/{night}-extra.jpg"], run_id=f"{run_id}-extra", when=DAY)
        runs.record(output, [scoring_row(f"{run_id}-extra", "model-a", DAY, threshold=0.25)])
    assert compact(output, retention_hours=0)["files_removed"] > 0  # rewritten, without the writers' metadata
    rows = run_query(output, "SELECT i.run_id, r.threshold, r.model_id, r.preprocessing FROM images i "
                             "JOIN runs r USING (run_id) ORDER BY 1").to_pylist()
    assert len(rows) == 15 and {(r["threshold"], r["model_id"]) for r in rows} == {(0.25, "model-a")}
    jobs = run_query(output, "SELECT job, count(*) AS n FROM runs GROUP BY 1 ORDER BY 1").to_pylist()
    assert jobs == [{"job": "compaction", "n": 1}, {"job": "scoring", "n": 6}]


def test_a_run_lost_between_its_two_commits_gets_its_row_back_from_the_log(tmp_path):
    output = str(tmp_path / "results")
    commit_run(output, ["s3://s/a.jpg"], run_id="died-after-commit")
    table = results.open_table(output)
    assert runs.restore_missing(output, table.history(20)) == 1
    assert runs.restore_missing(output, table.history(20)) == 0  # once
    (row,) = runs.read(output).to_pylist()
    assert row["run_id"] == "died-after-commit" and row["model_id"] == "model-a" and row["results_version"] == 1


def test_an_id_keeps_the_threshold_it_was_first_committed_with(tmp_path):
    output = str(tmp_path / "results")
    runs.record(output, [scoring_row("first", "0123456789abcdef", DAY, threshold=0.5)])
    card = {"model_id": "0123456789abcdef", "threshold": 0.5, "preprocessing": {"image_size": 32}}
    runs.check_model(output, card)
    with pytest.raises(CracknetError, match="first committed to .* by run first with another threshold"):
        runs.check_model(output, {**card, "threshold": 0.0002})


def test_a_table_from_before_error_kinds_reads_and_gains_the_column_on_its_next_commit(tmp_path):
    """A table an older release wrote (no error_kind column) answers every view, plans as before, and the
    next commit adds the column (null in its older rows)."""
    output = str(tmp_path / "results")
    old_schema = schema.FILE_SCHEMA.remove(schema.FILE_SCHEMA.get_field_index("error_kind"))
    rows = results.part_table({"image_uri": ["s3://s/a.jpg", "s3://s/b.jpg"], "version": ["v1", "v1"],
                               "width": [1, 1], "height": [1, 1], "error": ["", DENIED],
                               "crack_probability": [0.9, 0.0], "tiles_scored": [1, 0]},
                              [[], None], 0.5, "model-a", "old", DAY.isoformat(), {}).select(old_schema.names)
    part = results.write_part(rows, output, "old", DAY.date().isoformat())
    old_kind = results.TableKind(old_schema.append(schema.SCHEMA.field("run_date")), ("run_date",), "old", "old")
    results.commit(output, [part], "old", {"model_id": "model-a"}, kind=old_kind)
    assert "error_kind" not in results.open_table(output).schema().to_arrow().names
    assert run_query(output, "SELECT image_uri, error_kind FROM current ORDER BY 1").to_pylist() == [
        {"image_uri": "s3://s/a.jpg", "error_kind": None}, {"image_uri": "s3://s/b.jpg", "error_kind": None}]
    assert [u for u, _ in planned(output, [("s3://s/a.jpg", "v1"), ("s3://s/b.jpg", "v1")])[1]] == ["s3://s/b.jpg"]
    commit_run(output, ["s3://s/c.jpg"], run_id="new", errors=[DENIED], kinds=["transient"])
    kinds = run_query(output, "SELECT image_uri, error_kind FROM images ORDER BY 1").to_pylist()
    assert [k["error_kind"] for k in kinds] == [None, None, "transient"]
