"""infra/local: up.sh starts a token-authenticated Ray head and an S3 endpoint, and the commands it
prints (training, scoring, a query) work when run as printed; down.sh stops exactly that stack."""

import os
import socket
import subprocess

import pytest

from conftest import REPO, free_port

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def script(name: str, *args: str, timeout: float = 420) -> subprocess.CompletedProcess:
    # As from a user's shell: nothing inherited from the test session (its S3 endpoint, its Ray).
    shell = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    return subprocess.run([str(REPO / "infra" / "local" / name), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=shell)


def test_up_print_commands_run_them_down(tmp_path):
    state = tmp_path / "stack"
    ports = {"--ray-port": free_port(), "--dashboard-port": free_port(), "--s3-port": free_port()}
    flags = [str(x) for kv in ports.items() for x in kv]
    up = script("up.sh", "--state", str(state), *flags, "--num-cpus", "4", "--per-class", "40",
                "--epochs", "1", "--image-size", "32")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        token = (state / "auth_token").read_text()
        assert len(token) == 64 and token not in up.stdout + up.stderr
        assert oct((state / "auth_token").stat().st_mode & 0o777) == "0o600"
        assert all(listening(p) for p in ports.values())

        again = script("up.sh", "--state", str(state), *flags)
        assert again.returncode == 2
        assert again.stderr.strip().startswith("local stack: error: A local stack is already up")

        # The printed commands, exactly as printed, one after the other in one shell.
        printed = up.stdout.split("(paste in order, from any shell):\n", 1)[1].split("\nStop everything with:")[0]
        commands = [c for c in printed.strip().split("\n\n")]
        assert len(commands) == 4 and "jobs/train.py" in commands[1] and "jobs/score.py" in commands[2]
        run = subprocess.run(["bash", "-ec", "\n".join(commands)], capture_output=True, text=True, timeout=400,
                             env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
        out = run.stdout + run.stderr
        assert run.returncode == 0, out[-4000:]
        assert out.count("succeeded") >= 2 and "Model artifact: s3://cracknet-local/runs/local/model" in out
        assert "Scored 40 images (0 errors)" in out
        table = run.stdout.rsplit("Job '", 1)[-1]
        assert "/survey/bridge-north" in table and "/survey/tunnel-east" in table
        assert token not in out
    finally:
        down = script("down.sh", "--state", str(state))
    assert down.returncode == 0 and "Stopped the local stack" in down.stdout
    assert not any(listening(p) for p in ports.values())
    assert not (state / "auth_token").exists()
    assert "No local stack is up" in script("down.sh", "--state", str(state)).stdout
