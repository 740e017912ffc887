"""`ray job submit` against a real Ray head (`ray start --head`, token authentication on).

Both jobs keep their data, checkpoints, model and results on the S3 endpoint, so
the workers never rely on a shared local disk. The head runs under
``ray start --block`` in its own process group and is stopped however the test ends.
"""

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cracknet import storage
from cracknet.query import run_query

from conftest import BUCKET, REPO, free_port, wait_for_port

sys.path.insert(0, str(REPO / "infra" / "local"))
from stack import wait_for_jobs  # noqa: E402 - the same readiness wait as infra/local/up.sh

pytestmark = [pytest.mark.ray, pytest.mark.timeout(420)]

BIN = Path(sys.executable).parent
RUNTIME_ENV = json.dumps({"excludes": [".venv", ".git", "runs", "*.egg-info", "__pycache__"]})


@pytest.fixture(scope="module")
def ray_head(s3_endpoint, tmp_path_factory):
    token = secrets.token_hex(32)
    port, dashboard = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    log = open(tmp_path_factory.mktemp("ray-head") / "head.log", "w")
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=4",
         "--disable-usage-stats", "--include-dashboard=true"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(dashboard, timeout=120)
        wait_for_jobs(f"http://127.0.0.1:{dashboard}", env, 180, head, Path(log.name))
        yield {"address": f"http://127.0.0.1:{dashboard}", "env": env, "token": token,
               "home": str(tmp_path_factory.mktemp("empty-home"))}
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        log.close()


def ray_cli(head, *args, env=None, timeout=600):
    return subprocess.run([str(BIN / "ray"), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**head["env"], **(env or {})})


def submit(head, *args, wait=True):
    flags = [] if wait else ["--no-wait"]
    return ray_cli(head, "job", "submit", "--address", head["address"], "--working-dir", ".",
                   "--runtime-env-json", RUNTIME_ENV, *flags, "--", "python", *args)


def job_id(output: str) -> str:
    return re.search(r"raysubmit_\w+", output).group(0)


def wait_for_status(head, job: str, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = ray_cli(head, "job", "status", "--address", head["address"], job)
        # The CLI reports through its logger, on stderr: "Job 'raysubmit_...' succeeded".
        final = re.search(rf"Job '{job}' (succeeded|failed|stopped)", result.stdout + result.stderr)
        if final:
            return final.group(1).upper()
        time.sleep(2)
    raise AssertionError(f"job {job} did not finish in {timeout} s")


def job_logs(head, job: str) -> str:
    result = ray_cli(head, "job", "logs", "--address", head["address"], job)
    return result.stdout + result.stderr


def test_train_then_score_as_ray_jobs_on_object_storage(ray_head, synthetic_tree):
    data, run, results = (f"s3://{BUCKET}/cluster/{p}" for p in ("data", "run", "results"))
    for path in synthetic_tree.rglob("*.jpg"):
        storage.write_bytes(f"{data}/{path.relative_to(synthetic_tree).as_posix()}", path.read_bytes())

    train = submit(ray_head, "jobs/train.py", "--data", data, "--output", run, "--epochs", "3",
                   "--image-size", "32", "--batch-size", "8", "--num-workers", "2", "--weights", "none", wait=False)
    assert train.returncode == 0, train.stderr
    job = job_id(train.stdout + train.stderr)
    assert wait_for_status(ray_head, job) == "SUCCEEDED", job_logs(ray_head, job)[-3000:]
    train_logs = job_logs(ray_head, job)
    assert "Model artifact: " + run + "/model" in train_logs
    assert storage.exists(f"{run}/model/model.json")
    # What an operator reads: cracknet's lines, one per epoch, no Ray progress bars or worker chatter.
    lines = train_logs.strip().splitlines()
    assert len(lines) <= 60, train_logs
    assert [line.split(" (")[0] for line in lines if line.startswith("Epoch ")] == ["Epoch 1/3", "Epoch 2/3",
                                                                                   "Epoch 3/3"]
    assert not any("TrainingReport" in line or "pid=" in line for line in lines), train_logs

    score = submit(ray_head, "jobs/score.py", "--model", run, "--input", data, "--output", results, wait=False)
    assert score.returncode == 0, score.stderr
    job = job_id(score.stdout + score.stderr)
    assert wait_for_status(ray_head, job) == "SUCCEEDED"
    logs = job_logs(ray_head, job)
    assert "Scored 80 images (0 errors)" in logs
    assert len(logs.strip().splitlines()) <= 10, logs
    assert run_query(results, "SELECT count(*) AS n FROM images").to_pylist() == [{"n": 80}]
    # The token never leaks into what the jobs print or write.
    assert ray_head["token"] not in logs and ray_head["token"] not in train_logs


def test_a_bad_input_uri_ends_failed_with_the_clear_line(ray_head):
    result = submit(ray_head, "jobs/train.py", "--data", f"s3://{BUCKET}/cluster/nothing-here",
                    "--output", f"s3://{BUCKET}/cluster/bad-run", "--weights", "none", wait=False)
    job = job_id(result.stdout + result.stderr)
    assert wait_for_status(ray_head, job) == "FAILED"
    logs = job_logs(ray_head, job)
    assert f"cracknet: error: s3://{BUCKET}/cluster/nothing-here does not exist." in logs
    assert not storage.exists(f"s3://{BUCKET}/cluster/bad-run/model")


def test_a_missing_model_or_output_bucket_ends_failed_with_one_line_and_writes_nothing(ray_head):
    score = submit(ray_head, "jobs/score.py", "--model", f"s3://{BUCKET}/cluster/no-model",
                   "--input", f"s3://{BUCKET}/cluster/data", "--output", f"s3://{BUCKET}/cluster/no-results",
                   wait=False)
    train = submit(ray_head, "jobs/train.py", "--data", f"s3://{BUCKET}/cluster/data",
                   "--output", "s3://cracknet-no-such-bucket/run", "--weights", "none", wait=False)
    score_job, train_job = job_id(score.stdout + score.stderr), job_id(train.stdout + train.stderr)
    assert wait_for_status(ray_head, score_job) == "FAILED"
    assert (f"cracknet: error: s3://{BUCKET}/cluster/no-model holds no finished model (no model.json there or in "
            f"s3://{BUCKET}/cluster/no-model/model).") in job_logs(ray_head, score_job)
    assert not storage.exists(f"s3://{BUCKET}/cluster/no-results")
    assert wait_for_status(ray_head, train_job) == "FAILED"
    assert ("cracknet: error: The bucket 'cracknet-no-such-bucket' of s3://cracknet-no-such-bucket/run does not "
            "exist; create it or fix the URI.") in job_logs(ray_head, train_job)


def test_a_wrong_token_is_refused(ray_head):
    result = submit(ray_head, "jobs/train.py", "--help")
    assert result.returncode == 0
    refused = ray_cli(ray_head, "job", "submit", "--address", ray_head["address"], "--", "python", "-c", "0",
                      env={"RAY_AUTH_TOKEN": "not-the-token"})
    assert refused.returncode != 0 and "Invalid authentication token" in refused.stdout + refused.stderr
    env = {k: v for k, v in ray_head["env"].items() if k not in ("RAY_AUTH_TOKEN", "HOME")}
    missing = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", ray_head["address"], "--",
                              "python", "-c", "0"], cwd=REPO, capture_output=True, text=True, timeout=120,
                             env={**env, "HOME": str(Path(ray_head["home"]))})
    assert missing.returncode != 0 and "token" in (missing.stdout + missing.stderr).lower()


def test_a_wrong_address_fails_at_submit(ray_head):
    result = ray_cli(ray_head, "job", "submit", "--address", f"http://127.0.0.1:{free_port()}", "--",
                     "python", "-c", "0", timeout=120)
    assert result.returncode != 0
    assert "Failed to connect to Ray at address" in (result.stdout + result.stderr).strip().splitlines()[-1]
