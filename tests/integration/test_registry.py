"""Models in service: experiment tracking and the model registry on a real ``mlflow server`` (SQLite backend,
artifacts on the S3 test endpoint), the promotion gate, and nightly scoring of ``models:/name@alias``."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import BUCKET, model_card

from cracknet.model.card import read_model
from cracknet.model.network import build_model, save_artifact
from cracknet.registry import versions
from cracknet.score.config import ScoreConfig
from cracknet.table.query import run_query
from cracknet.train import tracking
from cracknet.train.config import TrainConfig


def test_a_tracked_training_run_is_one_mlflow_run_and_a_registered_version(ray_cluster, mlflow_server,
                                                                            synthetic_tree):
    from cracknet.train.driver import run_training

    output = f"s3://{BUCKET}/test_registry/tracked"
    lines = []
    card = run_training(TrainConfig(data=str(synthetic_tree), output=output, epochs=2, image_size=32,
                                    num_workers=2, weights="none", batch_size=8, experiment="cracknet-tests",
                                    registered_model="crack-tracked"), log=lines.append)
    client = tracking.client(mlflow_server)
    experiment = client.get_experiment_by_name("cracknet-tests")
    found = client.search_runs([experiment.experiment_id])
    assert len(found) == 1  # one run for the training run, not one per worker
    run = found[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["data.fingerprint"] == card["data"]["fingerprint"]
    assert int(run.data.params["data.train_images"]) == sum(card["data"]["counts"]["train"].values())
    assert run.data.params["epochs"] == "2" and "mlflow" not in run.data.params
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2]  # one step per epoch, the epoch line's figures
    assert [m.value for m in history] == pytest.approx([h["val_loss"] for h in card["training"]["history"]])
    assert run.data.metrics["test_recall"] == pytest.approx(card["metrics"]["test"]["recall"])
    assert run.data.metrics["threshold"] == pytest.approx(card["threshold"])
    assert run.data.tags["model_id"] == card["model_id"]
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "model")} | \
        {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"model/model.json", "report/report.html", "report/training_curves.png"} <= logged
    card_path = client.download_artifacts(run.info.run_id, "model/model.json")
    assert json.load(open(card_path))["model_id"] == card["model_id"]

    (version,) = client.search_model_versions("name='crack-tracked'")
    assert version.tags["model_id"] == card["model_id"] and version.tags["artifact_uri"] == card["folder"]
    assert version.source == card["folder"] and version.run_id == run.info.run_id
    assert card["registered"] == {"name": "crack-tracked", "version": version.version, "alias": None,
                                  "model_id": card["model_id"], "artifact_uri": card["folder"]}
    assert any(line.startswith("Tracking in MLflow at http://127.0.0.1:") for line in lines)

    # A models:/ URI reads the artifact the version names, wherever a model URI is taken.
    from cracknet.model.network import load_artifact

    _, loaded = load_artifact(f"models:/crack-tracked/{version.version}")
    assert loaded["model_id"] == card["model_id"] and loaded["registry"]["version"] == str(version.version)
    assert read_model(f"models:/crack-tracked/{version.version}")["folder"] == card["folder"]


def test_a_resumed_training_run_continues_its_mlflow_run(mlflow_server, tmp_path):
    checkpoints = str(tmp_path / "checkpoints")
    first = tracking.Tracker(mlflow_server, "cracknet-resume", "", checkpoints, log=lambda _: None)
    first.log_epoch({"epoch": 1, "val_loss": 0.7})
    first.fail()  # the driver died
    lines = []
    again = tracking.Tracker(mlflow_server, "cracknet-resume", "", checkpoints, log=lines.append)
    again.log_epoch({"epoch": 2, "val_loss": 0.6})
    assert again.run_id == first.run_id and lines[0].endswith("(resumed).")
    client = tracking.client(mlflow_server)
    assert client.get_run(first.run_id).info.status == "RUNNING"
    assert [m.step for m in client.get_metric_history(first.run_id, "val_loss")] == [1, 2]


def test_no_tracking_uri_means_no_mlflow(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert isinstance(tracking.start(None, "cracknet", "cracknet", "/nowhere"), tracking.NoTracking)
    code = ("import sys; from cracknet.train.driver import run_training; from cracknet import cli; from cracknet.score import driver; from cracknet.model import card; "
            "print('mlflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})
    assert out.stdout.strip() == "False", out.stderr


def _models(store: str, surface) -> dict[str, str]:
    """Three artifacts of one set of random weights on S3: the champion at a threshold that finds about half the
    surface's cracks, a candidate that finds none (threshold 1.0), and one that finds the same (a hair lower)."""
    from cracknet.predict.evaluate import predict_tree
    from cracknet.predict.scorer import Scorer

    state = build_model().state_dict()
    probe = f"{store}/probe/model"
    save_artifact(probe, state, model_card())
    found = predict_tree(Scorer.load(probe), str(surface))
    half = float(np.median(found.probs[found.labels == 1]))
    uris = {}
    for name, threshold in (("champion", half), ("blind", 1.0), ("same", np.nextafter(half, 0.0))):
        uris[name] = f"{store}/{name}/model"
        save_artifact(uris[name], state, model_card(threshold=float(threshold)))
    return uris


def test_the_promotion_gate_moves_the_alias_only_when_no_surface_gets_worse(mlflow_server, synthetic_tree,
                                                                             cracknet_cli):
    uris = _models(f"s3://{BUCKET}/test_registry/gate", synthetic_tree)
    client = tracking.client(mlflow_server)
    surface = f"synthetic={synthetic_tree}"
    promote = ["promote", "--registered-model", "crack-gate", "--alias", "champion"]

    first = cracknet_cli(*promote, "--model", uris["champion"])
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().splitlines() == [
        "Promoted: no version held @champion; @champion now names version 1 of crack-gate (model "
        f"{client.get_model_version('crack-gate', '1').tags['model_id']})."]

    refused = cracknet_cli(*promote, "--model", uris["blind"], "--data", surface)
    assert refused.returncode == 1
    assert refused.stderr.strip() == ("cracknet: error: Not promoted: version 2 is worse than version 1 on synthetic; "
                                      "@champion still names version 1.")
    assert "recall" in refused.stdout and ": worse (recall" in refused.stdout
    assert client.get_model_version_by_alias("crack-gate", "champion").version == "1"
    record = json.loads(client.get_model_version("crack-gate", "2").tags["cracknet.promotion.champion"])
    assert record["promoted"] is False and record["surfaces"]["synthetic"]["worse"][0] == "recall"

    no_surface = cracknet_cli(*promote, "--model", uris["same"])
    assert no_surface.returncode == 2 and "--data NAME=URI" in no_surface.stderr

    passed = cracknet_cli(*promote, "--model", uris["same"], "--data", surface)
    assert passed.returncode == 0, passed.stderr
    assert passed.stdout.strip().splitlines()[-1].startswith(
        "Promoted: no worse than version 1 on 1 surface; @champion now names version 3 of crack-gate")
    assert client.get_model_version_by_alias("crack-gate", "champion").version == "3"

    forced = cracknet_cli(*promote, "--model", "models:/crack-gate/2", "--data", surface,
                          "--force", "the bridge-a hotfix")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.strip().splitlines()[-1].startswith(
        "Promoted by force (the bridge-a hotfix) although worse than version 3 on synthetic")
    record = json.loads(client.get_model_version("crack-gate", "2").tags["cracknet.promotion.champion"])
    assert record["forced"] == "the bridge-a hotfix" and record["against_version"] == "3"


def test_nightly_scoring_of_an_alias_records_the_version_it_resolved(ray_cluster, mlflow_server, tmp_path):
    from PIL import Image

    from cracknet.score.driver import run_scoring

    model = f"s3://{BUCKET}/test_registry/served/model"
    save_artifact(model, build_model().state_dict(), model_card())
    client = tracking.client(mlflow_server)
    from cracknet.model.card import read_card

    version = versions.register(client, "crack-served", read_card(model))
    client.set_registered_model_alias("crack-served", "champion", version["version"])
    images = tmp_path / "night"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 40), (90 + 40 * i, 90, 90)).save(images / f"{i}.jpg")
    output = tmp_path / "results"
    summary = run_scoring(ScoreConfig(model="models:/crack-served@champion", input=str(images), output=str(output)),
                          log=lambda _: None)
    assert summary["model_version"] == f"crack-served/{version['version']}"
    (row,) = run_query(str(output), "SELECT model_version, model, model_id FROM runs").to_pylist()
    assert row == {"model_version": f"crack-served/{version['version']}", "model": model,
                   "model_id": version["model_id"]}


def test_a_registry_uri_is_refused_in_a_sentence(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from cracknet.errors import CracknetError

    with pytest.raises(CracknetError, match="set MLFLOW_TRACKING_URI or pass --mlflow"):
        versions.resolve("models:/cracknet@champion")
    with pytest.raises(CracknetError, match="use models:/NAME/VERSION or models:/NAME@ALIAS"):
        versions.parse("models:/cracknet")


def test_mlflow_errors_never_print_the_credentials_or_tokens_of_the_tracking_uri(tmp_path, monkeypatch, capsys):
    from conftest import free_port

    from cracknet.cli import main as cli_main

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # refused at once rather than after its backoff
    (tmp_path / "survey").mkdir()
    uri = f"http://svc:PASSWORD-1@127.0.0.1:{free_port()}/mlflow?token=TOKEN-2"
    status = cli_main(["score", "--model", "models:/cracknet@champion", "--mlflow", uri, "--input",
                       str(tmp_path / "survey"), "--output", str(tmp_path / "results")])
    err = capsys.readouterr().err.strip()
    assert status == 75 and err.startswith("cracknet: error: Cannot resolve models:/cracknet@champion at "
                                          "http://127.0.0.1:") and len(err.splitlines()) == 1, err
    assert "PASSWORD-1" not in err and "TOKEN-2" not in err and "svc" not in err


@pytest.mark.parametrize("alias", ["latest", "LATEST", "v3", "champion now", ""])
def test_an_alias_mlflow_reserves_or_cannot_store_is_refused(alias):
    from cracknet.errors import CracknetError
    from cracknet.predict.promote import promote

    with pytest.raises(CracknetError, match="cannot be an alias: MLflow reserves 'latest'"):
        promote("models:/cracknet/1", alias, [], mlflow_uri="http://127.0.0.1:9")
    versions.check_alias("champion-2")
