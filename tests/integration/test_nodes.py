"""Node loss on a real multi-node Ray cluster (``ray.cluster_utils.Cluster``: a head and worker nodes, each a
raylet of its own on this machine, token authentication on), with data, checkpoints and results on the S3
endpoint, driven as an operator drives it: `cracknet` commands connecting with --ray-address.

- a worker node that disappears mid-training (spot preemption, a host fault): the run resumes from the last
  checkpoint in S3 on the nodes that remain, and its card counts every epoch once;
- a node that disappears mid-scoring: the run finishes with exactly one row per image, or fails with nothing
  committed and the rerun completes it;
- a scoring driver stopped with SIGTERM (a pod eviction): it ends within a grace period, nothing committed.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import BUCKET, REPO

from cracknet import storage
from cracknet.demo.synthetic import concrete, draw_crack, image_bytes
from cracknet.table.query import run_query

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

GRACE_SECONDS = 30  # Kubernetes' default terminationGracePeriodSeconds
N_IMAGES = 120


class Nodes:
    """The cluster of ``tests/multinode.py``, in a process of its own, steered over its stdin."""

    def __init__(self, env: dict):
        self.env = env
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "multinode.py"), "--head-cpus", "1",
                                      "--nodes", "3", "--node-cpus", "2"], cwd=REPO, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        started = self._answer()
        self.address, self.raylets = started["address"], started["raylets"]

    def _answer(self) -> dict:
        line = self.proc.stdout.readline()
        assert line, "the cluster process ended"
        return json.loads(line)

    def _say(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        self.raylets = self._answer()["raylets"]

    def kill(self, raylet: int) -> None:
        self._say(f"kill {raylet}")  # SIGKILL the node's raylet and every process on it, as a host fault does

    def add(self) -> None:
        self._say("add")

    def stop(self) -> None:
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=120)


@pytest.fixture(scope="module")
def cluster(s3_endpoint):
    """A head (1 CPU: drivers' tasks and Ray Data) and three worker nodes of 2 CPUs, one raylet each."""
    # Ray turns a 127.0.0.1 address into the machine's own network address unless told this is a one-machine
    # cluster; every node and driver here stays on the loopback.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    nodes = Nodes(env)
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture(scope="module")
def survey(s3_endpoint):
    rng = np.random.default_rng(21)
    for i in range(N_IMAGES):
        img = concrete(rng, 48)
        if i % 2:
            draw_crack(img, rng)
        storage.write_bytes(f"s3://{BUCKET}/nodes/survey/s{i % 4}/img-{i:04d}.jpg", image_bytes(img))
    return f"s3://{BUCKET}/nodes/survey"


def cracknet(cluster: Nodes, *args: str) -> subprocess.Popen:
    """A cracknet command in its own process group (so that it can be stopped as a scheduler stops it)."""
    return subprocess.Popen([sys.executable, "-m", "cracknet.cli", *args, "--ray-address", cluster.address],
                            cwd=REPO, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def node_of(cluster: Nodes, process_title: str) -> int | None:
    """The raylet of the worker node that runs a process titled ``process_title`` (e.g. ray::RayTrainWorker)."""
    table = [line.split(None, 2) for line in subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True,
                                                             text=True).stdout.splitlines()[1:]]
    parent = {int(pid): int(ppid) for pid, ppid, *_ in table}
    for pid, _, *args in table:
        if args and process_title in args[0]:
            ancestor = int(pid)
            while ancestor in parent and ancestor not in cluster.raylets:
                ancestor = parent[ancestor]
            if ancestor in cluster.raylets:
                return ancestor
    return None


def wait_for(condition, timeout: float, what: str, run: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if run is not None and run.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {run.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def exactly_once(results: str) -> dict:
    return run_query(results, "SELECT count(*) AS n, count(DISTINCT image_uri) AS uris, count(error) AS errors "
                              "FROM images").to_pylist()[0]


def test_a_worker_node_lost_mid_training_resumes_from_the_s3_checkpoint_on_the_nodes_left(cluster,
                                                                                         synthetic_tree):
    output = f"s3://{BUCKET}/nodes/train"
    run = cracknet(cluster, "train", "--data", str(synthetic_tree), "--output", output, "--epochs", "2",
                   "--image-size", "32", "--batch-size", "8", "--num-workers", "2", "--cpus-per-worker", "2",
                   "--weights", "none", "--warmup-epochs", "0.2", "--max-failures", "2")
    snapshot = f"{output}/checkpoints/train/checkpoint_manager_snapshot.json"
    wait_for(lambda: storage.exists(snapshot) and b"epoch-0001" in storage.read_bytes(snapshot), 300,
             "the first checkpoint", run)
    # Two CPUs a worker and two a node: the workers stand on two nodes, the third is spare for the restart.
    node = node_of(cluster, "ray::RayTrainWorker")
    assert node is not None, "no training worker found on a worker node"
    cluster.kill(node)
    out, err = run.communicate(timeout=600)
    assert run.returncode == 0, err[-3000:]
    card = json.loads(storage.read_bytes(f"{output}/model/model.json"))
    training = card["training"]
    assert training["restarts"] >= 1 and training["epochs_completed"] == 2
    assert [h["epoch"] for h in training["history"]] == [1, 2]
    assert len({h["train_images"] for h in training["history"]}) == 1  # each epoch saw the same images
    assert np.isfinite(card["metrics"]["test"]["roc_auc"])
    assert [line for line in out.splitlines() if line.startswith("Epoch ")][-1].startswith("Epoch 2/2")
    cluster.add()  # three worker nodes again, for the next test


def test_a_node_lost_mid_scoring_leaves_one_row_per_image_or_nothing_and_the_rerun_completes(cluster, survey,
                                                                                            random_model, outcome):
    results = f"s3://{BUCKET}/nodes/results"
    run = cracknet(cluster, "score", "--model", str(random_model), "--input", survey, "--output", results,
                   "--num-actors", "2", "--read-batch-size", "8", "--rows-per-part", "20", "--lease-seconds", "10")
    wait_for(lambda: node_of(cluster, "MapWorker") is not None and storage.exists(results)
             and any("/run_date=" in u for u in storage.list_files(results)), 300, "the first files", run)
    cluster.kill(node_of(cluster, "MapWorker"))  # a node with a model actor, part-way through
    out, err = run.communicate(timeout=600)
    if run.returncode == 0:  # Ray Data restarted the actor and re-ran the lost tasks elsewhere
        assert f"Scored {N_IMAGES} images (0 errors)" in out
        outcome("Ray Data restarted the lost actor and re-ran its tasks; the run committed every image")
    else:
        assert "nothing from run" in err and "was committed" in err, err[-3000:]
        outcome("the run failed whole with nothing committed; the rerun committed every image")
        assert exactly_once(results)["n"] == 0
        assert not storage.exists(f"{results}/_lease.json")  # released on the way out: the rerun need not wait
        rerun = cracknet(cluster, "score", "--model", str(random_model), "--input", survey, "--output", results)
        out, err = rerun.communicate(timeout=600)
        assert rerun.returncode == 0, err[-3000:]
    assert exactly_once(results) == {"n": N_IMAGES, "uris": N_IMAGES, "errors": 0}


def test_a_scoring_driver_stopped_with_sigterm_ends_in_its_grace_period_with_nothing_committed(cluster, survey,
                                                                                              random_model):
    results = f"s3://{BUCKET}/nodes/evicted"
    run = cracknet(cluster, "score", "--model", str(random_model), "--input", survey, "--output", results,
                   "--read-batch-size", "8", "--rows-per-part", "20")
    wait_for(lambda: storage.exists(results) and any("/run_date=" in u for u in storage.list_files(results)), 300,
             "the first files", run)
    stopped = time.monotonic()
    os.kill(run.pid, signal.SIGTERM)  # what the kubelet sends first
    out, err = run.communicate(timeout=GRACE_SECONDS + 30)
    took = time.monotonic() - stopped
    assert run.returncode == 143 and took < GRACE_SECONDS, (run.returncode, took, err[-2000:])
    assert err.strip().splitlines()[-1].startswith("cracknet: stopped by SIGTERM;")
    assert exactly_once(results)["n"] == 0  # files written, none committed
    assert not storage.exists(f"{results}/_lease.json")  # released on the way out: the next run need not wait
    assert not any("/_staging/" in u for u in storage.list_files(results))
