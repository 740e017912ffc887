"""Object-store faults between the jobs and the S3 endpoint: throttling (503 SlowDown), dropped
connections before and after the store acted, and delays. Jobs retry and finish with complete,
exactly-once results; when the faults never stop, a job fails with one clear line and commits nothing."""

import json
import time

import numpy as np
import pytest
from conftest import BUCKET, TEST_ACCESS_KEY, TEST_SECRET_KEY
from faultproxy import FaultProxy, Faults

from cracknet import storage
from cracknet.demo.synthetic import concrete, draw_crack, image_bytes
from cracknet.errors import CracknetError
from cracknet.table.query import run_query
from cracknet.table.results import table_exists

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

N_IMAGES = 240
FLAKY = Faults(slow_down=0.08, drop_before=0.04, drop_after=0.04, delay=0.08)


@pytest.fixture(scope="module")
def survey(s3_endpoint):
    rng = np.random.default_rng(11)
    client = storage.s3_client()
    for i in range(N_IMAGES):
        img = concrete(rng, 32)
        if i % 2:
            draw_crack(img, rng)
        client.put_object(Bucket=BUCKET, Key=f"faults/survey/s{i % 3}/img-{i:04d}.jpg", Body=image_bytes(img))
    return f"s3://{BUCKET}/faults/survey"


def data_files_written(results: str) -> bool:
    return storage.exists(results) and any("/run_date=" in u for u in storage.list_files(results))


def through(proxy) -> dict:
    return {"AWS_ENDPOINT_URL": proxy.url, "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY}


def test_scoring_through_a_flaky_store_finishes_exactly_once(s3_endpoint, survey, random_model, cracknet_cli):
    results = f"s3://{BUCKET}/faults/results"
    with FaultProxy(s3_endpoint, FLAKY, seed=1) as proxy:
        run = cracknet_cli("score", "--model", str(random_model), "--input", survey, "--output", results,
                           "--rows-per-part", "40", "--lease-seconds", "20", env=through(proxy), timeout=500)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"Scored {N_IMAGES} images (0 errors)" in run.stdout
    faults = {k: v for k, v in proxy.counts.items() if k not in ("requests", "deny")}
    assert all(n > 0 for n in faults.values()), proxy.counts  # every kind of fault really happened
    assert any("/_delta_log/" in request and request.startswith("PUT") for request, _ in proxy.seen), \
        "the commit did not go through the faulty store"
    (row,) = run_query(results, "SELECT count(*) AS n, count(DISTINCT image_uri) AS uris, "
                                "count(error) AS errors FROM images").to_pylist()
    assert row == {"n": N_IMAGES, "uris": N_IMAGES, "errors": 0}
    assert not storage.exists(f"{results}/_lease.json")


def test_training_checkpoints_through_a_flaky_store(s3_endpoint, synthetic_tree, cracknet_cli):
    """Training reads its data from and writes its checkpoints and model to object storage, through faults."""
    from cracknet.model.network import load_artifact

    data, run_uri = f"s3://{BUCKET}/faults/train-data", f"s3://{BUCKET}/faults/run"
    for path in synthetic_tree.rglob("*.jpg"):
        storage.write_bytes(f"{data}/{path.relative_to(synthetic_tree).as_posix()}", path.read_bytes())
    storage.write_bytes(f"{data}/crack/truncated.jpg", b"\xff\xd8\xff\xe0 cut short")  # skipped and counted
    with FaultProxy(s3_endpoint, FLAKY, seed=2) as proxy:
        run = cracknet_cli("train", "--data", data, "--output", run_uri, "--epochs", "1", "--image-size", "32",
                           "--batch-size", "8", "--num-workers", "1", "--weights", "none",
                           "--max-bad-fraction", "0.05", env=through(proxy), timeout=500)
    assert run.returncode == 0, [line for line in run.stderr.splitlines() if "rror" in line][-15:]
    assert proxy.counts["slow_down"] and proxy.counts["drop_before"] and proxy.counts["drop_after"], proxy.counts
    card = json.loads(storage.read_bytes(f"{run_uri}/model/model.json"))
    assert card["training"]["epochs_completed"] == 1 and card["data"]["unreadable"] == 1
    files = storage.list_files(run_uri)
    assert f"{run_uri}/model/weights.pt" in files
    assert any("/checkpoints/train/epoch-0001/state.pt" in f for f in files)
    _, read = load_artifact(run_uri)
    assert read["model_id"] == card["model_id"] and read["data"]["uri"] == data


def test_faults_that_never_stop_fail_the_run_with_one_line_and_commit_nothing(s3_endpoint, survey, random_model,
                                                                              cracknet_cli):
    results = f"s3://{BUCKET}/faults/outage"
    with FaultProxy(s3_endpoint, Faults(), seed=3) as proxy:
        import threading

        def outage_once_parts_appear():
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if data_files_written(results):  # asked straight of the store, not through the proxy
                    proxy.faults = Faults(slow_down=1.0)
                    return
                time.sleep(0.1)

        watcher = threading.Thread(target=outage_once_parts_appear, daemon=True)
        watcher.start()
        started = time.monotonic()
        # Fewer attempts per request (the AWS SDKs' own setting) only shorten the wait for the verdict.
        run = cracknet_cli("score", "--model", str(random_model), "--input", survey, "--output", results,
                           "--rows-per-part", "20", env={**through(proxy), "AWS_MAX_ATTEMPTS": "3"}, timeout=500)
        watcher.join(timeout=1)
    assert proxy.faults.slow_down == 1.0, "the outage never began"
    assert run.returncode == 75, run.stdout[-2000:] + run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert lines[-1].startswith("cracknet: error: Scoring stopped and nothing from run "), lines[-5:]
    assert "SlowDown" in lines[-1] or "503" in lines[-1] or "kept failing" in lines[-1]
    assert time.monotonic() - started < 400
    assert not table_exists(results)
    assert run_query(results, "SELECT count(*) AS n FROM images").to_pylist() == [{"n": 0}]


def test_every_store_call_tells_an_unavailable_store_from_a_bad_input(s3_endpoint, survey, monkeypatch):
    """Arrow's S3 calls (look up, list, read, delete) that keep getting 503s raise StorageUnavailable (exit 75,
    retry later), whose sentence is the one shown, not the library error it replaced; a missing file stays
    a plain error (exit 2)."""
    from cracknet.errors import StorageUnavailable, exit_status, kind_of, root_cause

    key = "faults/survey/s0/img-0000.jpg"
    with FaultProxy(s3_endpoint, Faults(slow_down=1.0), seed=5) as proxy:
        for name, value in {**through(proxy), "AWS_MAX_ATTEMPTS": "2"}.items():
            monkeypatch.setenv(name, value)
        calls = {"look up": lambda: storage.exists(f"{survey}/s0"), "list": lambda: storage.list_files(survey),
                 "read": lambda: storage.read_bytes(f"s3://{BUCKET}/{key}"),
                 "delete": lambda: storage.delete_tree(f"s3://{BUCKET}/faults/nothing-here")}
        for verb, call in calls.items():
            with pytest.raises(StorageUnavailable, match=f"Cannot {verb} s3://") as raised:
                call()
            assert exit_status(kind_of(raised.value)("x")) == 75
            assert root_cause(raised.value).startswith(f"Cannot {verb} s3://"), root_cause(raised.value)
        assert proxy.counts["slow_down"] >= len(calls)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    with pytest.raises(CracknetError, match="does not exist") as missing:
        storage.read_bytes(f"s3://{BUCKET}/faults/no-such-file.jpg")
    assert not isinstance(missing.value, StorageUnavailable)


def test_a_refused_object_is_a_transient_error_and_a_too_large_one_is_refused_unread(s3_endpoint, survey,
                                                                                     monkeypatch):
    """AccessDenied on one object (a rotated key, a KMS or bucket policy) is an error row that later runs try
    again, not a fact about the image; an object over --max-bytes is refused from its size, its body unread."""
    from cracknet.predict.scorer import fetch

    denied, large = "faults/survey/s0/img-0000.jpg", f"s3://{BUCKET}/faults/huge/survey.tif"
    storage.write_bytes(large, b"II*\x00" + bytes(3 << 20))
    with FaultProxy(s3_endpoint, Faults(deny=denied), seed=7) as proxy:
        for name, value in through(proxy).items():
            monkeypatch.setenv(name, value)
        found, data = fetch(f"s3://{BUCKET}/{denied}")
        assert data is None and "AccessDenied" in found.error and found.error_kind == "transient"
        found, data = fetch(large, max_bytes=1 << 20)
        assert data is None and found.error_kind == "permanent"
        assert found.error == "the file is 3.0 MiB, over the limit of 1 MiB (--max-bytes), so it was not read"
        found, data = fetch(f"s3://{BUCKET}/faults/survey/s1/img-0001.jpg", max_bytes=1 << 20)
        assert data and not found.error
    assert proxy.counts["deny"] == 1 and len([r for r, _ in proxy.seen if "huge" in r]) == 1
    found, _ = fetch(f"s3://{BUCKET}/faults/survey/no-such.jpg")
    assert "does not exist" in found.error and found.error_kind == "permanent"


def test_a_large_object_is_read_in_one_request(s3_endpoint, monkeypatch):
    """A model's weights (about 95 MB) come in one GET, not in many small ranges: through Arrow's input
    stream they took 1,400 requests and 25 s on the local endpoint."""
    uri = f"s3://{BUCKET}/faults/large.bin"
    data = np.random.default_rng(0).bytes(24 << 20)
    storage.write_bytes(uri, data)
    with FaultProxy(s3_endpoint, Faults(), seed=6) as proxy:
        for name, value in through(proxy).items():
            monkeypatch.setenv(name, value)
        assert storage.read_bytes(uri) == data
    gets = [request for request, _ in proxy.seen if request.startswith("GET ") and "large.bin" in request]
    assert len(gets) == 1, proxy.seen[:10]


def test_a_commit_whose_answer_is_lost_is_committed_exactly_once(s3_endpoint, survey, random_model, cracknet_cli):
    """The store carries out the commit (the PUT of the log entry) but the answer never arrives: the retry
    must find the run's own commit in the log rather than commit the same files again."""
    results = f"s3://{BUCKET}/faults/lost-commit"
    lost = Faults(drop_after=1.0, only=f"PUT /{BUCKET}/faults/lost-commit/_delta_log/00000000000000000001.json",
                  limit=1)
    with FaultProxy(s3_endpoint, lost, seed=4) as proxy:
        run = cracknet_cli("score", "--model", str(random_model), "--input", survey, "--output", results,
                           env=through(proxy), timeout=500)
    assert run.returncode == 0, run.stderr[-3000:]
    assert proxy.counts["drop_after"] == 1, proxy.seen[-20:]
    (row,) = run_query(results, "SELECT count(*) AS n, count(DISTINCT image_uri) AS uris FROM images").to_pylist()
    assert row == {"n": N_IMAGES, "uris": N_IMAGES}
    assert not storage.exists(f"{results}/_delta_log/00000000000000000002.json")
