"""Faults a nightly scoring job meets: the driver killed part-way, and two runs started at once.

Both keep the same promise: the committed results hold exactly one row per image,
and nothing a killed or refused run staged is ever read as a result.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cracknet import storage
from cracknet.query import run_query
from cracknet.score import IMAGES, MANIFESTS, committed_manifests
from cracknet.synthetic import concrete, draw_crack, image_bytes

from conftest import BUCKET, REPO

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

N_IMAGES = 2000


@pytest.fixture(scope="module")
def survey(s3_endpoint):
    """A few thousand small generated JPEGs on the S3 endpoint, in four structures."""
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


def score_command(model, survey, results, *extra):
    return [sys.executable, "-m", "cracknet.cli", "score", "--model", str(model), "--input", survey,
            "--output", results, "--rows-per-part", "100", "--read-batch-size", "16", *extra]


def start(argv):
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def parts_under(results):
    return [u for u in storage.list_files(storage.join(results, IMAGES)) if u.endswith(".parquet")] \
        if storage.exists(storage.join(results, IMAGES)) else []


def exactly_once(results):
    (row,) = run_query(results, "SELECT count(*) AS n, count(DISTINCT image_uri) AS uris, "
                                "count(*) FILTER (WHERE error IS NOT NULL) AS errors FROM images").to_pylist()
    return row


def test_killing_the_driver_part_way_then_rerunning_gives_one_row_per_image(random_model, survey):
    results = f"s3://{BUCKET}/reliability/killed"
    run = start(score_command(random_model, survey, results, "--lease-seconds", "5"))
    deadline = time.monotonic() + 300
    while len(parts_under(results)) < 3:
        assert run.poll() is None, "the run finished before it could be killed: " + run.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "no parts were written"
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGKILL)  # the driver and the Ray it started, as when a node dies
    run.wait()
    staged = parts_under(results)
    assert 3 <= len(staged) < N_IMAGES // 100
    assert committed_manifests(results) == []
    # Staged parts of the killed run are not results.
    assert exactly_once(results) == {"n": 0, "uris": 0, "errors": 0}

    # Straight after the kill its lease is still live: a rerun is refused with one line.
    early = subprocess.run(score_command(random_model, survey, results), cwd=REPO, capture_output=True, text=True,
                           timeout=120)
    if early.returncode:
        assert early.stderr.strip().startswith(f"cracknet: error: Another scoring run is writing to {results}")
    else:  # the lease had already expired: the rerun finished the job, which is just as good
        assert "Scored" in early.stdout
    time.sleep(5)
    rerun = subprocess.run(score_command(random_model, survey, results), cwd=REPO, capture_output=True, text=True,
                           timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert exactly_once(results) == {"n": N_IMAGES, "uris": N_IMAGES, "errors": 0}
    named = {m_part["path"] for m in committed_manifests(results) for m_part in m[IMAGES]}
    assert {u[len(results) + 1:] for u in parts_under(results)} == named, "orphans of the killed run remain"


def test_two_runs_started_at_once_commit_one_set_of_rows(random_model, survey):
    results = f"s3://{BUCKET}/reliability/concurrent"
    runs = [start(score_command(random_model, survey, results)) for _ in range(2)]
    outcomes = [(r.wait(timeout=500), r.stdout.read(), r.stderr.read()) for r in runs]
    codes = sorted(code for code, _, _ in outcomes)
    assert codes == [0, 2], outcomes
    (refused,) = [err for code, _, err in outcomes if code == 2]
    assert refused.strip().startswith(f"cracknet: error: Another scoring run is writing to {results}: run ")
    assert len(refused.strip().splitlines()) == 1
    assert exactly_once(results) == {"n": N_IMAGES, "uris": N_IMAGES, "errors": 0}
    assert len(storage.list_files(storage.join(results, MANIFESTS))) == 1
