"""Experiment tracking: one MLflow run per training run, logged from the driver.

    cracknet train --data ... --output s3://b/runs/r7 --mlflow http://mlflow:5000     # or MLFLOW_TRACKING_URI
    cracknet train --data ... --output runs/try --mlflow sqlite:///runs/mlflow.db     # a local store to try it

The run holds the settings, the data's fingerprint and split counts, one metrics
step per epoch (the figures of the epoch line), the test metrics and threshold,
and the model card and report figures as artifacts; the model is registered as a
version of ``--registered-model`` (see ``cracknet.registry.versions``). The workers never
talk to MLflow: rank 0 hands each epoch's figures to the driver, which logs them,
so a run of N workers is one MLflow run. The MLflow run id is kept beside the
checkpoints, so a resumed training run continues the same MLflow run.

Without a tracking URI nothing here is imported and nothing changes.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable

from cracknet import storage
from cracknet.errors import CracknetError
from cracknet.registry.mlflow_client import client, reason, tracking_uri
from cracknet.screen import redact

RUN_FILE = "mlflow.json"  # under <output>/checkpoints/
METRIC_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1",
               "val_roc_auc", "lr", "images_per_second", "seconds")
TEST_KEYS = ("accuracy", "precision", "recall", "f1", "roc_auc", "average_precision")
MAX_PARAM = 500  # characters of one logged setting (MLflow limits a parameter's value)


class NoTracking:
    """What training calls when no tracking URI is set: nothing."""

    run_id = None

    def log_setup(self, settings: dict, data: dict) -> None:
        pass

    def log_epoch(self, metrics: dict) -> None:
        pass

    def finish(self, card: dict, artifacts: Callable[[str], None] | None = None) -> dict | None:
        return None

    def fail(self) -> None:
        pass


class Tracker:
    """One MLflow run of one training output. Failures after the start never fail training: the model matters
    more than its record, so they are told once (``log``) and the run goes on."""

    def __init__(self, uri: str, experiment: str, registered_model: str, checkpoints: str,
                 log: Callable[[str], None] = print):
        self.uri, self.registered_model, self.log = uri, registered_model, log
        self.client = client(uri)
        self.uri = uri
        self._told = False
        record_uri = storage.join(checkpoints, RUN_FILE)
        try:
            previous = json.loads(storage.read_bytes(record_uri)) if storage.exists(record_uri) else None
            if previous:
                self.run_id = previous["run_id"]
                self.client.update_run(self.run_id, status="RUNNING")
            else:
                found = self.client.get_experiment_by_name(experiment)
                experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
                self.run_id = self.client.create_run(experiment_id, tags={"mlflow.source.name": "cracknet train"}
                                                     ).info.run_id
                storage.write_bytes(record_uri, json.dumps({"run_id": self.run_id,
                                                            "experiment": experiment}).encode())
        except CracknetError:
            raise
        except Exception as exc:  # noqa: BLE001 - unreachable server, refused credentials, a bad URI
            raise CracknetError(f"Cannot start an MLflow run at {redact(uri)}: {reason(exc, uri)}") from None
        self.log(f"Tracking in MLflow at {redact(uri)}: experiment {experiment!r}, run {self.run_id}"
                 + (" (resumed)." if previous else "."))

    def _try(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            if not self._told:
                self.log(f"Warning: MLflow did not take the {what} ({reason(exc, self.uri)}); training goes on.")
                self._told = True
            return None

    def log_setup(self, settings: dict, data: dict) -> None:
        """The run's settings as parameters; the data's location, fingerprint and split counts."""
        from mlflow.entities import Param

        params = [Param(k, str(v)[:MAX_PARAM]) for k, v in sorted(settings.items())]
        params += [Param(f"data.{k}", str(v)[:MAX_PARAM]) for k, v in sorted(data.items())]
        self._try("settings", lambda: self._log_params(params))

    def _log_params(self, params: list) -> None:
        have = self.client.get_run(self.run_id).data.params  # a resumed run logged them already
        fresh = [p for p in params if p.key not in have]
        for start in range(0, len(fresh), 100):
            self.client.log_batch(self.run_id, params=fresh[start:start + 100])

    def log_epoch(self, metrics: dict) -> None:
        import time

        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        values = [Metric(k, float(metrics[k]), now, int(metrics["epoch"])) for k in METRIC_KEYS if k in metrics]
        self._try("epoch's metrics", lambda: self.client.log_batch(self.run_id, metrics=values))

    def finish(self, card: dict, artifacts: Callable[[str], None] | None = None) -> dict | None:
        """Log the final metrics, the card and the report figures (``artifacts(folder)`` draws them there);
        register the model; end the run. Returns the registered version (see ``versions.version_info``)."""
        import time

        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        test = card["metrics"]["test"]
        values = [Metric(f"test_{k}", float(test[k]), now, 0) for k in TEST_KEYS
                  if test.get(k) is not None and test[k] == test[k]]
        values.append(Metric("threshold", float(card["threshold"]), now, 0))
        if "mask" in card:
            values += [Metric(f"mask_{split}_{k}", float(card["mask"][split][k]), now, 0)
                       for split in ("val", "test") for k in ("f1", "iou") if card["mask"][split].get(k) is not None]
        self._try("final metrics", lambda: self.client.log_batch(
            self.run_id, metrics=values, tags=[_tag("model_id", card["model_id"]),
                                               _tag("artifact_uri", card["folder"])]))
        with tempfile.TemporaryDirectory() as folder:
            with open(os.path.join(folder, "model.json"), "w") as f:
                json.dump({k: v for k, v in card.items() if k != "folder"}, f, indent=2, default=str)
            self._try("model card", lambda: self.client.log_artifact(self.run_id, os.path.join(folder, "model.json"),
                                                                     "model"))
            if artifacts is not None:
                drawn = os.path.join(folder, "report")
                try:
                    artifacts(drawn)
                except Exception as exc:  # noqa: BLE001 - a figure that cannot be drawn costs only the figure
                    self.log(f"Warning: the report figures were not drawn ({reason(exc, self.uri)}).")
                else:
                    self._try("report", lambda: self.client.log_artifacts(self.run_id, drawn, "report"))
        version = None
        if self.registered_model:
            from cracknet.registry import versions

            version = self._try("registration", lambda: versions.register(self.client, self.registered_model,
                                                                          card, self.run_id))
        self._try("run's end", lambda: self.client.set_terminated(self.run_id, "FINISHED"))
        return version

    def fail(self) -> None:
        """Mark the run failed (a rerun of the same command resumes it)."""
        self._try("run's failure", lambda: self.client.set_terminated(self.run_id, "FAILED"))


def _tag(key: str, value: str):
    from mlflow.entities import RunTag

    return RunTag(key, value)


def start(flag: str | None, experiment: str, registered_model: str, checkpoints: str,
          log: Callable[[str], None] = print):
    """The tracker of a training run: an MLflow run when a tracking URI is set, else one that does nothing."""
    uri = tracking_uri(flag)
    return NoTracking() if uri is None else Tracker(uri, experiment, registered_model, checkpoints, log)
