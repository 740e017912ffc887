"""Faults a nightly scoring job meets: the driver killed part-way, and two runs started at once.

Both keep the same promise: the committed results hold exactly one row per image,
and nothing a killed or refused run wrote is ever read as a result, by cracknet,
by deltalake itself or by DuckDB.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import BUCKET, REPO
from deltalake import DeltaTable

from cracknet import storage
from cracknet.demo.synthetic import concrete, draw_crack, image_bytes
from cracknet.table.compact import compact
from cracknet.table.query import run_query

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

N_IMAGES = 1000


@pytest.fixture(scope="module")
def survey(s3_endpoint):
    """A thousand small generated JPEGs on the S3 endpoint, in four structures."""
    from cracknet.storage import s3_client

    rng = np.random.default_rng(7)
    client = s3_client()
    for i in range(N_IMAGES):
        img = concrete(rng, 32)
        if i % 3 == 0:
            draw_crack(img, rng)
        client.put_object(Bucket=BUCKET, Key=f"reliability/survey/structure-{i % 4}/img-{i:05d}.jpg",
                          Body=image_bytes(img))
    return f"s3://{BUCKET}/reliability/survey"


KILLED_LEASE = 20  # seconds: long enough that a rerun started straight after the kill always finds it live


def score_command(model, survey, results, *extra):
    return [sys.executable, "-m", "cracknet.cli", "score", "--model", str(model), "--input", survey,
            "--output", results, "--rows-per-part", "50", "--read-batch-size", "16", *extra]


def start(argv):
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def parts_under(results):
    """Every data file under the table's folder, committed or not."""
    return [u for u in storage.list_files(results) if "/run_date=" in u and u.endswith(".parquet")] \
        if storage.exists(results) else []


def delta_table(results):
    return DeltaTable(results, storage_options=storage.delta_options(results))


def as_read_elsewhere(results):
    """(version, sorted rows) as deltalake itself reads the table, and the row count DuckDB reads from it."""
    import duckdb

    table = delta_table(results)
    rows = sorted(table.to_pyarrow_table(columns=["image_uri", "run_id"]).to_pylist(), key=lambda r: r["image_uri"])
    con = duckdb.connect()
    con.register("t", table.to_pyarrow_dataset())
    (n,) = con.sql("SELECT count(*) FROM t").fetchall()[0]
    return table.version(), rows, n


def exactly_once(results):
    (row,) = run_query(results, "SELECT count(*) AS n, count(DISTINCT image_uri) AS uris, "
                                "count(*) FILTER (WHERE error IS NOT NULL) AS errors FROM images").to_pylist()
    return row


def test_killing_the_driver_part_way_leaves_the_table_as_it_was_and_a_rerun_finishes(random_model, survey):
    results = f"s3://{BUCKET}/reliability/killed"
    first = subprocess.run(score_command(random_model, f"{survey}/structure-0", results), cwd=REPO,
                           capture_output=True, text=True, timeout=400)
    assert first.returncode == 0, first.stderr[-3000:]
    before = as_read_elsewhere(results)
    assert len(before[1]) == before[2] == N_IMAGES // 4
    committed_files = len(parts_under(results))

    run = start(score_command(random_model, survey, results, "--lease-seconds", str(KILLED_LEASE)))
    deadline = time.monotonic() + 300
    while len(parts_under(results)) < committed_files + 3:  # the killed run has written files of its own
        assert run.poll() is None, "the run finished before it could be killed: " + run.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "no files were written"
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGKILL)  # the driver and the Ray it started, as when a node dies
    killed = time.monotonic()
    run.wait()
    # Straight after the kill its lease is still live: a rerun is refused with one line (it asks for the lease
    # before it starts Ray, well within the killed run's lease).
    early = subprocess.run(score_command(random_model, survey, results), cwd=REPO, capture_output=True, text=True,
                           timeout=120)
    assert early.returncode == 73, early.stderr[-3000:]  # another run holds the output: a scheduler retries later
    assert early.stderr.strip().startswith(f"cracknet: error: Another scoring run is writing to {results}")
    assert len(parts_under(results)) > len(delta_table(results).file_uris())  # files of the killed run are there
    # ... and no reader sees them: the table is exactly as it was.
    assert as_read_elsewhere(results) == before
    assert exactly_once(results) == {"n": N_IMAGES // 4, "uris": N_IMAGES // 4, "errors": 0}

    time.sleep(max(0.0, killed + KILLED_LEASE + 2 - time.monotonic()))  # the lease, by the store's whole seconds
    rerun = subprocess.run(score_command(random_model, survey, results), cwd=REPO, capture_output=True, text=True,
                           timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert exactly_once(results) == {"n": N_IMAGES, "uris": N_IMAGES, "errors": 0}
    # Vacuum deletes what the killed run wrote; every file left is one the table references.
    compact(results, retention_hours=0)
    referenced = {u.rsplit("/", 1)[-1] for u in delta_table(results).file_uris()}
    assert {u.rsplit("/", 1)[-1] for u in parts_under(results)} == referenced
    assert exactly_once(results) == {"n": N_IMAGES, "uris": N_IMAGES, "errors": 0}


def test_two_runs_started_at_once_commit_one_set_of_rows(random_model, survey):
    results = f"s3://{BUCKET}/reliability/concurrent"
    runs = [start(score_command(random_model, survey, results)) for _ in range(2)]
    outcomes = [(r.wait(timeout=500), r.stdout.read(), r.stderr.read()) for r in runs]
    codes = sorted(code for code, _, _ in outcomes)
    assert codes == [0, 73], outcomes
    (refused,) = [err for code, _, err in outcomes if code == 73]
    assert refused.strip().startswith(f"cracknet: error: Another scoring run is writing to {results}: run ")
    assert len(refused.strip().splitlines()) == 1
    assert exactly_once(results) == {"n": N_IMAGES, "uris": N_IMAGES, "errors": 0}
    writes = [c for c in delta_table(results).history() if c.get("operation") == "WRITE"]
    assert len(writes) == 1, writes
