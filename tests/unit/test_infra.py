"""The deployment files under infra/: they parse, carry what their kind requires, run real job
entrypoints with flags the jobs accept, and pin the same versions as pyproject.toml."""

from __future__ import annotations

import argparse
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from cracknet.cli import build_parser
from cracknet.config import from_arguments
from cracknet.score.config import ScoreConfig
from cracknet.train.config import TrainConfig

INFRA = REPO / "infra"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
RAY_VERSION = next(re.fullmatch(r"ray\[[^\]]*\]==(\S+)", d).group(1)
                   for d in PYPROJECT["project"]["dependencies"] if d.startswith("ray["))
PYTHON_TAG = "py" + re.search(r">=\s*3\.(\d+)", PYPROJECT["project"]["requires-python"]).expand(r"3\1")
DOCKERFILE = (INFRA / "docker" / "Dockerfile").read_text()
IMAGE_HOME = re.search(r"^WORKDIR\s+(\S+)", DOCKERFILE, re.M).group(1)
IMAGE = f"cracknet:{VERSION}"
CONFIGS = {"train": TrainConfig, "score": ScoreConfig}
SECRET_NAMES = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|SESSION_KEY)", re.I)


def yaml_files() -> list[Path]:
    return sorted(INFRA.rglob("*.yaml")) + sorted(INFRA.rglob("*.yml"))


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((INFRA / name).read_text()) if d is not None]


def manifests(kind: str) -> list[tuple[str, dict]]:
    found = [(p.relative_to(INFRA).as_posix(), d) for p in sorted((INFRA / "kuberay").glob("*.yaml"))
             for d in yaml.safe_load_all(p.read_text()) if d and d.get("kind") == kind]
    assert found, f"no {kind} under infra/kuberay"
    return found


def check_entrypoint(entrypoint: str) -> list[tuple[str, argparse.Namespace]]:
    """``python <image home>/jobs/X.py --flags [&& python ...]``: each file exists and each job's own parser
    accepts its flags; returns the cracknet commands in order (a Ray job's entrypoint runs in a shell)."""
    commands = []
    for step in entrypoint.split("&&"):
        argv = shlex.split(step)
        assert argv[0] == "python" and argv[1].startswith(IMAGE_HOME + "/jobs/"), entrypoint
        job = REPO / argv[1][len(IMAGE_HOME) + 1:]
        assert job.is_file(), f"{argv[1]} is not a file under jobs/"
        command = re.search(r'main\(\["(\w+)"', job.read_text()).group(1)
        try:
            args = build_parser().parse_args([command, *argv[2:]])
        except SystemExit:
            pytest.fail(f"jobs/{job.name} refuses the flags of {step!r}")
        if command in CONFIGS:
            from_arguments(CONFIGS[command], args)  # the settings' own checks
        commands.append((command, args))
    return commands


def containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def check_no_literal_secrets(node) -> None:
    """Secrets only by reference (envFrom / valueFrom), never as values in the files."""
    if isinstance(node, dict):
        if "name" in node and "value" in node and SECRET_NAMES.search(str(node["name"])):
            pytest.fail(f"{node['name']} is set to a literal value")
        for value in node.values():
            check_no_literal_secrets(value)
    elif isinstance(node, list):
        for value in node:
            check_no_literal_secrets(value)


def check_ray_cluster_spec(spec: dict, *, autoscaling: bool = False) -> None:
    assert spec["rayVersion"] == RAY_VERSION
    assert spec["authOptions"] == {"mode": "token"}, "token authentication stays on"
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    groups = spec["workerGroupSpecs"]
    assert groups and len({g["groupName"] for g in groups}) == len(groups)
    pods = [head["template"]] + [g["template"] for g in groups]
    for pod in pods:
        assert pod["spec"]["serviceAccountName"] == "cracknet"
        for container in containers(pod):
            assert container["image"] == IMAGE and container["name"]
            sources = {next(iter(s.values()))["name"] for s in container.get("envFrom", [])}
            assert {"cracknet-storage", "cracknet-s3-credentials"} <= sources
            assert container["resources"]["requests"] and container["resources"]["limits"]
    for group in groups:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    gpu_groups = [g for g in groups if "nvidia.com/gpu" in containers(g["template"])[0]["resources"]["limits"]]
    assert gpu_groups, "a GPU worker group"
    for group in gpu_groups:
        resources = containers(group["template"])[0]["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] >= 1
        assert any(t["key"] == "nvidia.com/gpu" for t in group["template"]["spec"]["tolerations"])
    if autoscaling:
        assert spec["enableInTreeAutoscaling"] is True
        assert any(g["minReplicas"] < g["maxReplicas"] for g in groups)


def check_rayjob_spec(spec: dict) -> list:
    commands = check_entrypoint(spec["entrypoint"])
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] >= 0
    assert spec["activeDeadlineSeconds"] > 0
    assert spec["backoffLimit"] >= 0
    check_ray_cluster_spec(spec["rayClusterSpec"])
    return commands


def check_cron(schedule: str) -> None:
    fields = schedule.split()
    assert len(fields) == 5 and all(re.fullmatch(r"[\d*/,-]+", f) for f in fields), schedule


def test_every_yaml_file_parses_and_every_manifest_names_its_kind():
    files = yaml_files()
    assert {p.relative_to(INFRA).as_posix() for p in files} >= {
        "kuberay/storage.yaml", "kuberay/train-rayjob.yaml", "kuberay/raycluster.yaml",
        "kuberay/score-raycronjob.yaml", "kuberay/score-cronjob.yaml", "aws/cluster.yaml"}
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path} is empty"
        if path.parent.name == "kuberay":
            for doc in docs:
                assert doc["apiVersion"] and doc["kind"], path
                assert doc["metadata"].get("name") or doc["metadata"].get("generateName"), path
                check_no_literal_secrets(doc)


def test_training_rayjob():
    (name, job), = manifests("RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    assert [c for c, _ in check_rayjob_spec(job["spec"])] == ["train"]
    assert "--use-gpu" in shlex.split(job["spec"]["entrypoint"])


def test_interactive_raycluster_autoscales():
    (name, cluster), = manifests("RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    check_ray_cluster_spec(cluster["spec"], autoscaling=True)
    assert cluster["spec"]["autoscalerOptions"]["idleTimeoutSeconds"] > 0


def test_nightly_scoring_as_raycronjob_and_as_cronjob_for_older_kuberay():
    (_, cron), = manifests("RayCronJob")
    assert cron["apiVersion"] == "ray.io/v1"
    check_cron(cron["spec"]["schedule"])
    (score, scored), (compact, compacted) = check_rayjob_spec(cron["spec"]["jobTemplate"])
    assert (score, compact) == ("score", "compact") and compacted.results == scored.output, \
        "each night compacts the table it scored into"

    (_, cronjob), = manifests("CronJob")
    assert cronjob["apiVersion"] == "batch/v1"
    check_cron(cronjob["spec"]["schedule"])
    assert cronjob["spec"]["schedule"] == cron["spec"]["schedule"]
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]
    (container,) = containers(pod)
    (volume,) = pod["spec"]["volumes"]
    (mount,) = container["volumeMounts"]
    assert container["command"][:3] == ["kubectl", "create", "-f"]
    assert Path(container["command"][3]).parent == Path(mount["mountPath"]) and mount["name"] == volume["name"]

    configmap = {d["metadata"]["name"]: d for _, d in manifests("ConfigMap")}[volume["configMap"]["name"]]
    rayjob = yaml.safe_load(configmap["data"][Path(container["command"][3]).name])
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    assert rayjob["metadata"]["generateName"], "each night creates a new RayJob"
    assert rayjob["spec"] == cron["spec"]["jobTemplate"], "the two nightly schedules run the same RayJob"

    account = pod["spec"]["serviceAccountName"]
    bindings = [b for _, b in manifests("RoleBinding") if any(s["name"] == account for s in b["subjects"])]
    roles = {r["metadata"]["name"]: r for _, r in manifests("Role")}
    rules = [rule for b in bindings for rule in roles[b["roleRef"]["name"]]["rules"]]
    assert any("ray.io" in r["apiGroups"] and "rayjobs" in r["resources"] and "create" in r["verbs"] for r in rules)


def _secret_env(container: dict) -> dict[str, dict]:
    """The container's variables that come from a Secret: name -> secretKeyRef."""
    return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})}


def test_the_nightly_job_scores_the_champion_and_gets_the_registry_and_webhook_from_a_secret():
    (_, cron), = manifests("RayCronJob")
    job = cron["spec"]["jobTemplate"]
    (score, scored), _ = check_rayjob_spec(job)
    assert scored.model == "models:/cracknet@champion"
    from cracknet.registry.versions import parse

    assert parse(scored.model) == ("cracknet", None, "champion")
    cluster = job["rayClusterSpec"]
    (head,) = containers(cluster["headGroupSpec"]["template"])
    refs = _secret_env(head)
    assert set(refs) == {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN", "CRACKNET_ALERT_WEBHOOK"}
    assert {r["name"] for r in refs.values()} == {"cracknet-operations"}
    assert not refs["MLFLOW_TRACKING_URI"].get("optional"), "a models:/ URI cannot resolve without the registry"
    assert refs["CRACKNET_ALERT_WEBHOOK"]["optional"] is True, "alerts are optional"
    for group in cluster["workerGroupSpecs"]:  # the workers load the folder the driver resolved: no registry
        assert not any(_secret_env(c) for c in containers(group["template"]))
    from cracknet.score.driver import ALERT_WEBHOOK_ENV

    assert ALERT_WEBHOOK_ENV == "CRACKNET_ALERT_WEBHOOK"


def test_training_is_tracked_when_the_secret_names_a_tracking_server():
    (_, job), = manifests("RayJob")
    (head,) = containers(job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"])
    refs = _secret_env(head)
    assert refs["MLFLOW_TRACKING_URI"] == {"name": "cracknet-operations", "key": "mlflow-tracking-uri",
                                           "optional": True}


def test_storage_access_comes_from_the_platform_or_a_secret_reference():
    docs = {d["kind"]: d for d in documents("kuberay/storage.yaml")}
    assert "eks.amazonaws.com/role-arn" in docs["ServiceAccount"]["metadata"]["annotations"]
    assert set(docs["ConfigMap"]["data"]) <= {"AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"}
    assert "Secret" not in docs, "credentials are created by the operator, not committed"


def test_cluster_launcher_config_is_valid_for_ray():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((INFRA / "aws" / "cluster.yaml").read_text())
    validate_config(prepare_config(config))  # what `ray up` checks before it creates anything
    assert config["provider"]["type"] == "aws"
    assert config["idle_timeout_minutes"] > 0
    assert config["docker"]["image"] == IMAGE
    assert "-e RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert "~/.ray/auth_token" in config["file_mounts"]
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    gpu = [t for t in workers.values() if re.match(r"(g|p)\d", t["node_config"]["InstanceType"])]
    assert gpu, "a GPU worker node type"
    for node_type in gpu:
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= config["max_workers"]
        assert node_type["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    commands = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=disabled" not in commands


def test_docker_image_pins_the_same_ray_and_python_and_ships_the_jobs():
    assert re.search(rf"^ARG RAY_VERSION={re.escape(RAY_VERSION)}$", DOCKERFILE, re.M)
    assert re.search(rf"^FROM rayproject/ray:\$\{{RAY_VERSION\}}-{PYTHON_TAG}-gpu$", DOCKERFILE, re.M)
    assert re.search(r"^RUN pip install --no-cache-dir \.", DOCKERFILE, re.M)
    assert re.search(r"^COPY .*\bjobs \./jobs$", DOCKERFILE, re.M)
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_no_credentials_in_any_infra_file():
    for path in INFRA.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert not re.search(r"AKIA[0-9A-Z]{16}", text), path
            assert not re.search(r"aws_secret_access_key\s*[:=]\s*[A-Za-z0-9/+]{20,}", text, re.I), path


def test_the_package_reports_the_version_it_is_installed_as():
    import cracknet

    assert cracknet.__version__ == VERSION
