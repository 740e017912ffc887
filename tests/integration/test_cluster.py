"""`ray job submit` against a real Ray head with token authentication on and a real S3 endpoint: the
local stack of infra/local.

up.sh starts the stack; the commands it prints (training, scoring and a query, as Ray jobs) work when
run as printed, keep data, checkpoints, model and results on the S3 endpoint (the workers never rely on
a shared local disk) and log what an operator can read; failing jobs end FAILED with one clear line;
down.sh stops exactly that stack. Every test here shares one stack, brought up once.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, free_port

sys.path.insert(0, str(REPO / "infra" / "local"))
from stack import BUCKET, EXCLUDES, stack_environment

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

BIN = Path(sys.executable).parent
EPOCHS = 2
RAY_AGENT_DEFAULT_PORT = 52365  # Ray's default dashboard agent port


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def script(name: str, *args: str, timeout: float = 420) -> subprocess.CompletedProcess:
    # As from a user's shell: nothing inherited from the test session (its S3 endpoint, its Ray).
    shell = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    return subprocess.run([str(REPO / "infra" / "local" / name), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=shell)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    state = tmp_path_factory.mktemp("stack") / "state"
    ports = {"--ray-port": free_port(), "--dashboard-port": free_port(), "--s3-port": free_port()}
    flags = [str(x) for kv in ports.items() for x in kv]
    # Another Ray on this machine (a command's local Ray, a notebook's) may hold Ray's default agent port; the
    # stack must come up all the same, so the port is held while it does.
    squatter = socket.socket()
    try:
        squatter.bind(("0.0.0.0", RAY_AGENT_DEFAULT_PORT))
        squatter.listen()
    except OSError:  # someone holds it already
        pass
    try:
        up = script("up.sh", "--state", str(state), *flags, "--num-cpus", "4", "--per-class", "40",
                    "--epochs", str(EPOCHS), "--image-size", "32")
    finally:
        squatter.close()
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        home = tmp_path_factory.mktemp("empty-home")
        env = {"PATH": f"{BIN}{os.pathsep}/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
               **stack_environment(state, ports["--s3-port"])}
        yield {"up": up, "state": state, "ports": ports, "flags": flags, "env": env, "home": home,
               "address": f"http://127.0.0.1:{ports['--dashboard-port']}",
               "token": (state / "auth_token").read_text()}
    finally:
        script("down.sh", "--state", str(state))


@pytest.fixture
def on_stack(stack, monkeypatch):
    """This process's cracknet.storage talks to the stack's S3 endpoint, as the jobs do."""
    for name, value in stack_environment(stack["state"], stack["ports"]["--s3-port"]).items():
        monkeypatch.setenv(name, value)
    from cracknet import storage

    return storage


def ray_cli(stack, *args, env=None, timeout=600):
    return subprocess.run([str(BIN / "ray"), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**stack["env"], **(env or {})})


def submit(stack, *args):
    """Submit without waiting (as a scheduler would); the job's id."""
    result = ray_cli(stack, "job", "submit", "--address", stack["address"], "--working-dir", ".",
                     "--runtime-env-json", json.dumps({"excludes": EXCLUDES}), "--no-wait", "--", "python", *args)
    assert result.returncode == 0, result.stderr
    return re.search(r"raysubmit_\w+", result.stdout + result.stderr).group(0)


def wait_for_status(stack, job: str, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = ray_cli(stack, "job", "status", "--address", stack["address"], job)
        # The CLI reports through its logger, on stderr: "Job 'raysubmit_...' succeeded".
        final = re.search(rf"Job '{job}' (succeeded|failed|stopped)", result.stdout + result.stderr)
        if final:
            return final.group(1).upper()
        time.sleep(2)
    raise AssertionError(f"job {job} did not finish in {timeout} s")


def job_logs(stack, job: str) -> str:
    result = ray_cli(stack, "job", "logs", "--address", stack["address"], job)
    return result.stdout + result.stderr


def test_up_starts_a_token_protected_stack_once(stack):
    up, state = stack["up"], stack["state"]
    assert len(stack["token"]) == 64 and stack["token"] not in up.stdout + up.stderr
    assert oct((state / "auth_token").stat().st_mode & 0o777) == "0o600"
    assert all(listening(p) for p in stack["ports"].values())
    again = script("up.sh", "--state", str(state), *stack["flags"])
    assert again.returncode == 2
    assert again.stderr.strip().startswith("local stack: error: A local stack is already up")


def test_the_printed_commands_train_score_and_query_as_ray_jobs(stack, tmp_path):
    printed = stack["up"].stdout.split("(paste in order, from any shell):\n", 1)[1].split("\nStop everything")[0]
    commands = [c for c in printed.strip().split("\n\n")]
    assert len(commands) == 4 and "jobs/train.py" in commands[1] and "jobs/score.py" in commands[2]
    assert "--num-workers 2" in commands[1]
    # Exactly as printed, one after the other in one shell.
    run = subprocess.run(["bash", "-ec", "\n".join(commands)], capture_output=True, text=True, timeout=600,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert out.count("succeeded") >= 2 and f"Model artifact: s3://{BUCKET}/runs/local/model" in out
    table = run.stdout.rsplit("Job '", 1)[-1]
    assert "/survey/bridge-north" in table and "/survey/tunnel-east" in table

    train_job, score_job = dict.fromkeys(re.findall(r"raysubmit_\w+", out))
    # What an operator reads: cracknet's lines, one per epoch, no Ray progress bars or worker chatter.
    train_logs = job_logs(stack, train_job)
    lines = train_logs.strip().splitlines()
    assert len(lines) <= 60, train_logs
    assert [line.split(" (")[0] for line in lines if line.startswith("Epoch ")] == \
        [f"Epoch {k}/{EPOCHS}" for k in range(1, EPOCHS + 1)]
    assert not any("TrainingReport" in line or "pid=" in line for line in lines), train_logs
    score_logs = job_logs(stack, score_job)
    assert "Scored 40 images (0 errors)" in score_logs
    assert len(score_logs.strip().splitlines()) <= 10, score_logs
    # The token never leaks into what the jobs print.
    assert stack["token"] not in out + train_logs + score_logs


def test_a_bad_input_uri_ends_failed_with_the_clear_line(stack, on_stack):
    job = submit(stack, "jobs/train.py", "--data", f"s3://{BUCKET}/nothing-here", "--output",
                 f"s3://{BUCKET}/bad-run", "--weights", "none")
    assert wait_for_status(stack, job) == "FAILED"
    assert f"cracknet: error: s3://{BUCKET}/nothing-here does not exist." in job_logs(stack, job)
    assert not on_stack.exists(f"s3://{BUCKET}/bad-run/model")


def test_a_missing_model_or_output_bucket_ends_failed_with_one_line_and_writes_nothing(stack, on_stack):
    score_job = submit(stack, "jobs/score.py", "--model", f"s3://{BUCKET}/no-model",
                       "--input", f"s3://{BUCKET}/survey", "--output", f"s3://{BUCKET}/no-results")
    train_job = submit(stack, "jobs/train.py", "--data", f"s3://{BUCKET}/data",
                       "--output", "s3://cracknet-no-such-bucket/run", "--weights", "none")
    assert wait_for_status(stack, score_job) == "FAILED"
    assert (f"cracknet: error: s3://{BUCKET}/no-model holds no finished model (no model.json there or in "
            f"s3://{BUCKET}/no-model/model).") in job_logs(stack, score_job)
    assert not on_stack.exists(f"s3://{BUCKET}/no-results")
    assert wait_for_status(stack, train_job) == "FAILED"
    assert ("cracknet: error: The bucket 'cracknet-no-such-bucket' of s3://cracknet-no-such-bucket/run does not "
            "exist; create it or fix the URI.") in job_logs(stack, train_job)


def test_a_wrong_or_missing_token_is_refused(stack):
    without_token = {k: v for k, v in stack["env"].items() if k not in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")}
    refused = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", stack["address"], "--", "python",
                              "-c", "0"], cwd=REPO, capture_output=True, text=True, timeout=120,
                             env={**without_token, "RAY_AUTH_TOKEN": "not-the-token"})
    assert refused.returncode != 0 and "Invalid authentication token" in refused.stdout + refused.stderr
    missing = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", stack["address"], "--", "python",
                              "-c", "0"], cwd=REPO, capture_output=True, text=True, timeout=120, env=without_token)
    assert missing.returncode != 0 and "token" in (missing.stdout + missing.stderr).lower()


def test_a_wrong_address_fails_at_submit(stack):
    result = ray_cli(stack, "job", "submit", "--address", f"http://127.0.0.1:{free_port()}", "--",
                     "python", "-c", "0", timeout=120)
    assert result.returncode != 0
    assert "Failed to connect to Ray at address" in (result.stdout + result.stderr).strip().splitlines()[-1]


def test_down_stops_exactly_that_stack(stack):
    state = stack["state"]
    down = script("down.sh", "--state", str(state))
    assert down.returncode == 0 and "Stopped the local stack" in down.stdout
    assert not any(listening(p) for p in stack["ports"].values())
    assert not (state / "auth_token").exists()
    assert "No local stack is up" in script("down.sh", "--state", str(state)).stdout
