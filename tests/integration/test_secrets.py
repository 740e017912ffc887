"""Credentials never leak: a full run (train, evaluate, score, query, a failure) on the S3 endpoint with
the test credentials and a Ray token, then every byte it printed or wrote is searched for them."""

import secrets
import time
from pathlib import Path

import pytest
from conftest import BUCKET, TEST_ACCESS_KEY, TEST_SECRET_KEY

from cracknet import storage

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

RAY_TEMP = Path("/tmp/ray")


def test_no_output_of_a_full_run_contains_a_credential(cracknet_cli, synthetic_tree, s3_endpoint):
    started = time.time()
    token = secrets.token_hex(32)
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    root = f"s3://{BUCKET}/secrets"
    for path in synthetic_tree.rglob("*.jpg"):
        storage.write_bytes(f"{root}/data/{path.relative_to(synthetic_tree).as_posix()}", path.read_bytes())

    runs = [
        cracknet_cli("train", "--data", f"{root}/data", "--output", f"{root}/run", "--epochs", "1",
                     "--image-size", "32", "--batch-size", "8", "--num-workers", "1", "--weights", "none", env=env),
        cracknet_cli("evaluate", "--model", f"{root}/run", "--data", f"{root}/data", "--json", f"{root}/eval.json",
                     env=env),
        cracknet_cli("score", "--model", f"{root}/run", "--input", f"{root}/data", "--output", f"{root}/results",
                     env=env),
        cracknet_cli("query", "--results", f"{root}/results", "SELECT * FROM images", env=env),
        # A failure, with a secret key other than the endpoint's (one that holds the real key: a leak of
        # either is found below).
        cracknet_cli("score", "--model", f"{root}/no-model", "--input", f"{root}/data", "--output",
                     f"{root}/results", env={**env, "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY + "-wrong"}),
    ]
    assert [r.returncode for r in runs] == [0, 0, 0, 0, 2], [r.stderr[-2000:] for r in runs]

    outputs = {f"{' '.join(r.args[3:5])} (stdout+stderr)": (r.stdout + r.stderr).encode() for r in runs}
    written = storage.list_files(root)
    assert any(u.endswith("model.json") for u in written) and any(u.endswith(".parquet") for u in written)
    for uri in written:
        # Weights and checkpoints (*.pt) hold only tensors and numbers: they load with weights_only=True.
        if "/data/" not in uri and not uri.endswith(".pt"):
            outputs[uri] = storage.read_bytes(uri)
    for session in RAY_TEMP.glob("session_2*"):
        if session.stat().st_mtime >= started - 1:
            for path in (session / "logs").rglob("*"):
                if path.is_file() and path.stat().st_size < 50_000_000:
                    outputs[str(path)] = path.read_bytes()
    assert len(outputs) > 20

    for needle in (TEST_SECRET_KEY, TEST_ACCESS_KEY, token):
        leaks = [name for name, data in outputs.items() if needle.encode() in data]
        assert not leaks, f"a credential appears in {leaks}"
