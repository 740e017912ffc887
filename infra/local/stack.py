"""A local stack for trying cracknet as Ray jobs: a token-authenticated Ray head and an S3 endpoint.

    infra/local/up.sh      # start both, create a bucket, upload sample images, print the job commands
    infra/local/down.sh    # stop both and remove the stack's state folder

The Ray head runs ``ray start --head --block`` and the S3-compatible endpoint is
moto's server, each in its own process group so that ``down`` stops exactly
these processes and nothing else on the machine. Both listen on 127.0.0.1 only.
The Ray token is generated here and kept in ``<state>/auth_token`` (mode 0600);
the commands read it through ``RAY_AUTH_TOKEN_PATH`` so it is never printed.
The S3 credentials are placeholders: the local endpoint keeps its objects in
memory and forgets them when it stops.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

BUCKET = "cracknet-local"
DEV_DATA = REPO.parent / "shared" / "data" / "metu-dev"
EXCLUDES = [".venv", ".git", "runs", "*.egg-info", "__pycache__"]
STRUCTURES = ("bridge-north", "tunnel-east")


class StackError(Exception):
    pass


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(port: int, what: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _listening(port):
            return
        if proc.poll() is not None:
            raise StackError(f"The {what} exited with status {proc.returncode}; see {log}.")
        time.sleep(0.2)
    raise StackError(f"The {what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s; see {log}.")


def wait_for_jobs(address: str, env: dict, timeout: float, head: subprocess.Popen, log: Path) -> None:
    """The dashboard answers before its job agent is ready: wait until a trivial job really runs."""
    ray = Path(sys.executable).parent / "ray"
    deadline = time.monotonic() + timeout
    attempt = 0
    while time.monotonic() < deadline:
        attempt += 1
        try:
            probe = subprocess.run([str(ray), "job", "submit", "--address", address, "--no-wait",
                                    "--submission-id", f"local-stack-ready-{attempt}", "--", "python", "-c", "pass"],
                                   env=env, capture_output=True, text=True, timeout=60)
            if probe.returncode == 0:
                return
        except subprocess.TimeoutExpired:
            pass
        if head.poll() is not None:
            raise StackError(f"The Ray head exited with status {head.returncode}; see {log}.")
        time.sleep(2)
    raise StackError(f"The Ray head did not accept jobs within {timeout:.0f} s; see {log}.")


def _start(argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=REPO)


def _stop_group(pid: int, timeout: float = 16.0) -> None:
    """SIGTERM to the process group, SIGKILL after ``timeout`` seconds (the grace period of ``ray stop``)."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stack_environment(state: Path, s3_port: int) -> dict[str, str]:
    """What a shell needs to talk to the stack: the Ray token file and the S3 endpoint."""
    return {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(state / "auth_token"),
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
        "AWS_ACCESS_KEY_ID": "local-stack",
        "AWS_SECRET_ACCESS_KEY": "local-stack",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def upload_samples(per_class: int, image_size: int) -> tuple[str, str, int]:
    """Labelled images under data/ and unlabelled "survey" images per structure under survey/.

    The METU development patches are used when they are present (the first
    ``per_class`` of each class for training, the next ones as the survey);
    otherwise generated crack JPEGs.
    """
    from cracknet import storage
    from cracknet.demo.synthetic import generate

    data, survey = f"s3://{BUCKET}/data", f"s3://{BUCKET}/survey"
    survey_count = 0
    if DEV_DATA.is_dir():
        for label in ("crack", "no_crack"):
            files = sorted((DEV_DATA / label).glob("*.jpg"))
            for path in files[:per_class]:
                storage.write_bytes(f"{data}/{label}/{path.name}", path.read_bytes())
            for i, path in enumerate(files[per_class:per_class + per_class // 2]):
                structure = STRUCTURES[i % len(STRUCTURES)]
                storage.write_bytes(f"{survey}/{structure}/{label}-{path.name}", path.read_bytes())
                survey_count += 1
    else:
        generate(data, per_class=per_class, size=max(image_size, 64))
        for i, uri in enumerate(generate(f"s3://{BUCKET}/generated-survey", per_class=per_class // 2,
                                         size=max(image_size, 64), seed=1)):
            name = uri.rsplit("/", 1)[1]
            storage.write_bytes(f"{survey}/{STRUCTURES[i % len(STRUCTURES)]}/{name}", storage.read_bytes(uri))
            survey_count += 1
        storage.delete_tree(f"s3://{BUCKET}/generated-survey")
    return data, survey, survey_count


def job_commands(state: Path, dashboard_port: int, epochs: int, image_size: int) -> list[str]:
    address = f"http://127.0.0.1:{dashboard_port}"
    runtime_env = shlex.quote(json.dumps({"excludes": EXCLUDES}))
    submit = f"ray job submit --address {address} --working-dir . --runtime-env-json {runtime_env} --"
    run, results = f"s3://{BUCKET}/runs/local", f"s3://{BUCKET}/predictions"
    sql = "SELECT * FROM structures ORDER BY structure"
    return [
        f"cd {shlex.quote(str(REPO))} && source {shlex.quote(str(state / 'env.sh'))}",
        f"{submit} python jobs/train.py --data s3://{BUCKET}/data --output {run} "
        f"--epochs {epochs} --image-size {image_size} --batch-size 16 --num-workers 2 --weights none",
        f"{submit} python jobs/score.py --model {run} --input s3://{BUCKET}/survey --output {results}",
        f"cracknet query --results {results} {shlex.quote(sql)}",
    ]


def up(args: argparse.Namespace) -> None:
    state = Path(args.state).resolve()
    if (state / "stack.json").exists():
        raise StackError(f"A local stack is already up (state in {state}); run infra/local/down.sh first.")
    for port in (args.ray_port, args.dashboard_port, args.s3_port):
        if _listening(port):
            raise StackError(f"Port {port} on 127.0.0.1 is in use; choose another with the --*-port options.")
    state.mkdir(parents=True, exist_ok=True)
    token = state / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {**os.environ, **stack_environment(state, args.s3_port)}
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_ADDRESS", None)
    os.environ.update(stack_environment(state, args.s3_port))
    os.environ.pop("RAY_AUTH_TOKEN", None)
    bindir = Path(sys.executable).parent
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    started: dict = {"ray_port": args.ray_port, "dashboard_port": args.dashboard_port, "s3_port": args.s3_port}
    try:
        s3 = _start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(args.s3_port)],
                    env, state / "s3.log")
        started["s3_pid"] = s3.pid
        (state / "stack.json").write_text(json.dumps(started))
        _wait_for(args.s3_port, "S3 endpoint", 60, s3, state / "s3.log")
        # The head's agents get ports of their own: on Ray's defaults they would collide with any other Ray on
        # this machine (a notebook's local Ray), and the job agent that `ray job submit` needs would not start.
        agents = [f"--{flag}={_free_port()}" for flag in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                          "runtime-env-agent-port", "metrics-export-port")]
        head = _start([str(bindir / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                       f"--port={args.ray_port}", "--dashboard-host=127.0.0.1",
                       f"--dashboard-port={args.dashboard_port}", f"--num-cpus={args.num_cpus}",
                       "--include-dashboard=true", "--disable-usage-stats", *agents], env, state / "ray-head.log")
        started["ray_pid"] = head.pid
        (state / "stack.json").write_text(json.dumps(started))

        from cracknet import storage

        storage.s3_client().create_bucket(Bucket=BUCKET)
        data, survey, survey_count = upload_samples(args.per_class, args.image_size)
        _wait_for(args.dashboard_port, "Ray head", 180, head, state / "ray-head.log")
        wait_for_jobs(f"http://127.0.0.1:{args.dashboard_port}", env, 180, head, state / "ray-head.log")
    except BaseException:
        down_state(state)
        raise
    lines = [f"export {k}={shlex.quote(v)}" for k, v in stack_environment(state, args.s3_port).items()]
    lines.append(f"export PATH={shlex.quote(str(bindir))}:\"$PATH\"")
    (state / "env.sh").write_text("\n".join(lines) + "\n")
    commands = job_commands(state, args.dashboard_port, args.epochs, args.image_size)
    (state / "commands.sh").write_text("set -e\n" + "\n".join(commands) + "\n")
    print(f"Ray head (token authentication on): http://127.0.0.1:{args.dashboard_port}; token in {token}")
    print(f"S3 endpoint: http://127.0.0.1:{args.s3_port}, bucket {BUCKET}: {2 * args.per_class} labelled "
          f"images under {data}, {survey_count} survey images under {survey}/<structure>/")
    print("\nTrain, score and query as Ray jobs (paste in order, from any shell):\n")
    print("\n\n".join(commands))
    print(f"\nStop everything with: infra/local/down.sh --state {shlex.quote(str(state))}")


def down_state(state: Path) -> bool:
    info_path = state / "stack.json"
    if not info_path.exists():
        return False
    info = json.loads(info_path.read_text())
    for key in ("ray_pid", "s3_pid"):
        if key in info:
            _stop_group(info[key])
    for name in ("stack.json", "auth_token", "env.sh", "commands.sh"):
        (state / name).unlink(missing_ok=True)
    return True


def down(args: argparse.Namespace) -> None:
    state = Path(args.state).resolve()
    if down_state(state):
        print(f"Stopped the local stack in {state} (Ray head and S3 endpoint); its objects are gone.")
    else:
        print(f"No local stack is up in {state}.")


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state", default=str(REPO / "runs" / "local-stack"),
                        help="folder for the token, logs and process ids (default: runs/local-stack)")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("up", parents=[common],
                           help="start the Ray head and the S3 endpoint, upload samples, print commands")
    start.add_argument("--ray-port", type=int, default=6380)
    start.add_argument("--dashboard-port", type=int, default=8266)
    start.add_argument("--s3-port", type=int, default=9010)
    start.add_argument("--num-cpus", type=int, default=max(2, os.cpu_count() or 2))
    start.add_argument("--per-class", type=int, default=400, help="labelled sample images per class")
    start.add_argument("--epochs", type=int, default=3, help="epochs in the printed training command")
    start.add_argument("--image-size", type=int, default=64, help="image size in the printed training command")
    start.set_defaults(run=up)
    stop = sub.add_parser("down", parents=[common], help="stop the Ray head and the S3 endpoint")
    stop.set_defaults(run=down)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except StackError as exc:
        print(f"local stack: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
