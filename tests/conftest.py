"""Shared fixtures: a real S3-compatible endpoint (moto's server), a real local Ray, real images.

Ray starts after the S3 endpoint so that its workers inherit the endpoint and
the test credentials from the environment, exactly as on a real cluster node.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEV_DATA = REPO.parent / "shared" / "data" / "metu-dev"
TEST_ACCESS_KEY = "AKIACRACKNETTESTKEY1"
TEST_SECRET_KEY = "cracknet-test-secret-do-not-log-0123456789"
BUCKET = "cracknet-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"Nothing listened on port {port} within {timeout} s.")


def start_moto(log_path: Path, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """moto's S3 server in its own process on a free localhost port; returns it and its endpoint URL.

    Its own process, not a thread of the tests': deltalake's Rust client may hold the GIL while it
    waits for an answer, and a server sharing that interpreter could then never answer.
    """
    port = free_port()
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(port)
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def outcome(request):
    """Where a test accepts more than one correct outcome (a lost node: Ray recovers, or the run fails whole), it
    says which one it saw: ``outcome("Ray Data re-ran the lost tasks")``; the summary lists them."""
    return lambda text: request.node.user_properties.append(("outcome", text))


def pytest_terminal_summary(terminalreporter):
    seen = [(report.nodeid, value) for report in terminalreporter.stats.get("passed", [])
            if report.when == "call" for key, value in report.user_properties if key == "outcome"]
    if seen:
        terminalreporter.write_sep("-", "outcomes seen where more than one is correct")
        for nodeid, text in seen:
            terminalreporter.write_line(f"{nodeid.split('::')[-1]}: {text}")


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """moto in server mode on a free localhost port; boto3, pyarrow and deltalake all talk to it over HTTP."""
    proc, endpoint = start_moto(tmp_path_factory.mktemp("s3") / "moto.log")
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID=TEST_ACCESS_KEY,
                      AWS_SECRET_ACCESS_KEY=TEST_SECRET_KEY, AWS_DEFAULT_REGION="us-east-1")
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    yield endpoint
    stop(proc)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def strict_s3_endpoint(tmp_path_factory):
    """A second moto server, in its own process, that enforces credentials (unknown keys get 403)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    proc, endpoint = start_moto(tmp_path_factory.mktemp("strict-s3") / "moto.log", env)
    try:
        yield endpoint
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint):
    """A real local Ray with 4 logical CPUs (2 training workers plus Ray Data), token auth on."""
    import ray

    # address="local": always a fresh in-process cluster, never one a `ray start` left behind.
    ray.init(address="local", num_cpus=4, _node_ip_address="127.0.0.1", include_dashboard=False,
             log_to_driver=False)
    yield ray
    ray.shutdown()


def _copy_subset(source: Path, dest: Path, per_class: int) -> Path:
    for label in ("crack", "no_crack"):
        (dest / label).mkdir(parents=True, exist_ok=True)
        for path in sorted((source / label).iterdir())[:per_class]:
            shutil.copy(path, dest / label / path.name)
    return dest


@pytest.fixture(scope="session")
def labelled_tree(tmp_path_factory) -> Path:
    """A small labelled tree: real METU patches when the dev set is present, generated ones otherwise."""
    dest = tmp_path_factory.mktemp("labelled")
    if DEV_DATA.is_dir():
        return _copy_subset(DEV_DATA, dest, per_class=60)
    from cracknet.demo.synthetic import generate

    generate(str(dest), per_class=60, size=96, seed=1)
    return dest


@pytest.fixture(scope="session")
def trained_run(ray_cluster, labelled_tree, tmp_path_factory) -> tuple[Path, dict]:
    """One tiny model trained as a user trains one (Ray Train, 2 DDP workers, 2 epochs, 32 px, random init) on
    the labelled tree, shared by the tests that need a real training run's artifact; returns the training output
    and its card. Tests read it and never change it (copy the model folder to edit a card)."""
    from cracknet.train.config import TrainConfig
    from cracknet.train.driver import run_training

    output = tmp_path_factory.mktemp("trained") / "run"
    card = run_training(TrainConfig(data=str(labelled_tree), output=str(output), epochs=2, image_size=32, batch_size=8,
                                    num_workers=2, weights="none", warmup_epochs=0.2), log=lambda _: None)
    return output, card


@pytest.fixture(scope="session")
def synthetic_tree(tmp_path_factory) -> Path:
    from cracknet.demo.synthetic import generate

    dest = tmp_path_factory.mktemp("synthetic")
    generate(str(dest), per_class=40, size=64, seed=2)
    return dest


@pytest.fixture
def cracknet_cli():
    """Run the installed ``cracknet`` command in a subprocess; returns the CompletedProcess."""

    def run(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cracknet.cli", *args], capture_output=True, text=True,
                              env={**os.environ, **(env or {})}, timeout=timeout, cwd=REPO)

    return run


def png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's shape)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="PNG")
    data = buffer.getvalue()
    chunk = b"IHDR" + struct.pack(">II", width, height) + data[24:29]
    return data[:12] + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]


def model_card(image_size: int = 32, source_size: int = 96, threshold: float = 0.5, masks: bool = False) -> dict:
    """A card made the way training makes one (``train.card_writer.build_card`` from a split plan and the workers'
    predictions), for artifacts made in tests; ``threshold`` fixes the operating point where a test needs one, and
    ``masks`` adds the mask section a model with a decoder carries."""
    import numpy as np

    from cracknet.data.splits import SplitPlan
    from cracknet.images.decoding import Preprocessing
    from cracknet.train.card_writer import build_card
    from cracknet.train.config import TrainConfig

    labels = np.array([0, 1] * 12)
    probs = np.clip(0.15 + 0.6 * labels + np.linspace(-0.1, 0.1, len(labels)), 0.0, 1.0)
    cfg = TrainConfig(data="/tests/labelled", output="/tests/run", image_size=image_size, source_size=source_size,
                      weights="none")
    counts = {"no_crack": 12, "crack": 12}
    plan = SplitPlan(members={split: {} for split in ("train", "val", "test")},
                     counts={split: dict(counts) for split in ("train", "val", "test")}, typical_side=source_size)
    predictions = {"val": (probs, labels), "test": (probs, labels), "history": [], "restarts": 0}
    if masks:
        truth = np.zeros((24, image_size, image_size), dtype=bool)
        truth[:, :, image_size // 2] = True
        predictions["masks"] = {"val": [(t.astype(np.float32), t) for t in truth],
                                "test": [(t.astype(np.float32), t) for t in truth]}
    card = build_card(cfg, Preprocessing(image_size), plan, predictions, epochs_completed=1, kept_epoch=1,
                      seconds=1.0, checkpoints="/tests/run/checkpoints", versions={})
    card["threshold"] = threshold
    return card


@pytest.fixture(scope="session")
def random_model(tmp_path_factory) -> Path:
    """A randomly initialised ResNet50 artifact (32 px input) for scoring tests."""
    from cracknet.model.network import build_model, save_artifact

    folder = tmp_path_factory.mktemp("random-model") / "model"
    save_artifact(str(folder), build_model().state_dict(), model_card())
    return folder


@pytest.fixture(params=["local", "s3"])
def store_root(request, tmp_path) -> str:
    """A fresh, empty location for one test: a local folder, then an s3:// prefix on the S3 endpoint."""
    if request.param == "local":
        return str(tmp_path / "store")
    request.getfixturevalue("s3_endpoint")
    return f"s3://{BUCKET}/{request.module.__name__}/{request.node.name}"


@pytest.fixture(scope="session")
def imagenet_like_file(tmp_path_factory):
    """A torchvision-format ResNet50 state dict (1000-class head), as a weights file would hold."""
    import torch
    import torchvision

    torch.manual_seed(0)
    state = torchvision.models.resnet50(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def mlflow_server(s3_endpoint, tmp_path_factory):
    """``mlflow server`` on a free localhost port (SQLite, artifacts on the S3 endpoint), one per test module that
    asks; its URI is MLFLOW_TRACKING_URI for that module's tests."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                             "--artifacts-destination", f"s3://{BUCKET}/mlflow-artifacts", "--workers", "1"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(port, timeout=120)
    uri = f"http://127.0.0.1:{port}"
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    stop(proc)
    if saved is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved
