"""The review loop end to end against a real Label Studio (its server on localhost with SQLite, from
.venv-labelstudio, which ``make test`` installs): score, select, export the tasks, review them through Label
Studio's API, export from Label Studio, import the verdicts and masks, measure the model in the field, adapt a
model from the corrections, and put it to the promotion gate on the inspectors' labels."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from conftest import BUCKET, free_port
from helpers import dark_line_segmenter, draw_survey, mask_card
from PIL import Image

from cracknet import storage
from cracknet.cli import main as cli_main
from cracknet.images.decoding import read_mask
from cracknet.model.network import save_artifact
from cracknet.review.labelstudio import decode_rle, encode_rle
from cracknet.score.config import ScoreConfig
from cracknet.score.driver import run_scoring

ROOT = Path(__file__).resolve().parents[2]
LABEL_STUDIO = Path(os.environ.get("CRACKNET_LABEL_STUDIO", ROOT / ".venv-labelstudio" / "bin" / "label-studio"))
TOKEN = "c0ffee00" * 5  # the reviewer account's API token, set at start


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """Label Studio on a free localhost port, its files served from a folder of the test's (local-files serving);
    nothing leaves the machine (no telemetry, no version check, no Sentry)."""
    if not LABEL_STUDIO.exists():
        pytest.skip(f"Label Studio is not installed at {LABEL_STUDIO} (make test installs it)")
    data, files = tmp_path_factory.mktemp("label-studio"), tmp_path_factory.mktemp("label-studio-files")
    port = free_port()
    env = {**os.environ, "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "", "COLLECT_ANALYTICS": "false",
           "LATEST_VERSION_CHECK": "false", "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
           "LABEL_STUDIO_USERNAME": "reviewer@example.com", "LABEL_STUDIO_PASSWORD": "review-pass-2026",
           "LABEL_STUDIO_USER_TOKEN": TOKEN, "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files)}
    log = open(data / "server.log", "wb")
    server = subprocess.Popen([str(LABEL_STUDIO), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
                               "--data-dir", str(data)], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def ready() -> str:
        """Wait for the server (it takes about half a minute: the test scores meanwhile); its base URL."""
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if r.status == 200:
                        return base
            except (urllib.error.URLError, ConnectionError):
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("Label Studio did not start:\n" + (data / "server.log").read_text()[-3000:])
            time.sleep(1)

    try:
        yield ready, files
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def api(base: str, method: str, path: str, body=None, raw: bool = False):
    request = urllib.request.Request(base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        data = response.read()
    return data if raw else json.loads(data or b"null")


def verdict(cracked: bool, mask: np.ndarray | None = None) -> list[dict]:
    """What a reviewer submits: the verdict, and the crack drawn with the brush."""
    result = [{"from_name": "verdict", "to_name": "image", "type": "choices",
               "value": {"choices": ["crack" if cracked else "no crack"]}}]
    if mask is not None:
        result.append({"from_name": "mask", "to_name": "image", "type": "brushlabels", "original_width": mask.shape[1],
                       "original_height": mask.shape[0], "image_rotation": 0,
                       "value": {"format": "rle", "rle": encode_rle(mask), "brushlabels": ["crack"]}})
    return result


def test_the_review_loop_through_label_studio(ray_cluster, label_studio, mlflow_server, tmp_path, capsys, outcome):
    ready, files = label_studio
    truth = draw_survey(files / "survey", photos=30)  # every third photo shows no crack
    images = files / "survey" / "images"
    model = tmp_path / "model"
    save_artifact(str(model), dark_line_segmenter().state_dict(), mask_card())  # says crack everywhere, draws dark
    # The model in service: registered (a tracking server registers models kept in object storage) and scored
    # nightly through its alias.
    in_service = upload(model, "in-service")
    promote = ["promote", "--registered-model", "crack-review", "--alias", "production", "--mlflow", mlflow_server]
    assert cli_main([*promote, "--model", in_service]) == 0
    results, review = tmp_path / "results", tmp_path / "review"
    run_scoring(ScoreConfig(model="models:/crack-review@production", mlflow=mlflow_server, input=str(images),
                            output=str(results), mm_per_pixel=0.2, masks=str(results / "_masks")), log=lambda _: None)

    # A budget of every photo (half for cause, half at random): the labelled tree is then the same in every run,
    # and so is its split for the adaptation below (the sampling's own tests are in test_review_sampling.py).
    assert cli_main(["review", "select", "--results", str(results), "--output", str(review), "--budget", "30",
                     "--random-share", "0.5"]) == 0
    assert cli_main(["review", "export", "--review", str(review), "--image-url", f"local-files:{files}"]) == 0
    tasks = json.loads((review / "label-studio" / "tasks.json").read_text())
    assert len(tasks) == 30 and all(t["data"]["image"].startswith("/data/local-files/?d=survey/images/") for t in tasks)

    # Label Studio's own brush codec (its SDK) reads the masks cracknet wrote, and cracknet reads its encoding
    drawn = next(t for t in tasks if len(t["predictions"][0]["result"]) == 2)["predictions"][0]["result"][1]
    width, height = drawn["original_width"], drawn["original_height"]
    sdk = subprocess.run([str(LABEL_STUDIO.parent / "python"), "-c", SDK_ROUND_TRIP], check=True, text=True,
                         capture_output=True, input=json.dumps({"rle": drawn["value"]["rle"], "h": height, "w": width}))
    theirs = json.loads(sdk.stdout)
    ours = decode_rle(drawn["value"]["rle"], width, height)
    assert np.array_equal(np.array(theirs["mask"], dtype=bool), ours) and ours.any()
    assert np.array_equal(decode_rle(theirs["rle"], width, height), ours)
    # The same selection as COCO, read back by pycocotools: each annotation is the mask the model drew
    from pycocotools.coco import COCO

    assert cli_main(["review", "export", "--review", str(review), "--format", "coco"]) == 0
    dataset = COCO(str(review / "coco" / "annotations.json"))
    masks_by_uri = {p["image_uri"]: p["mask_uri"] for p in field_selection(review)}
    assert len(dataset.getImgIds()) == 30 and dataset.getAnnIds()
    for annotation in dataset.loadAnns(dataset.getAnnIds()):
        uri = dataset.loadImgs(annotation["image_id"])[0]["file_name"]
        assert np.array_equal(dataset.annToMask(annotation).astype(bool), read_mask(Path(masks_by_uri[uri]).read_bytes()))

    # Label Studio: a project with cracknet's config, the tasks with their predictions, the photos it serves
    base = ready()
    project = api(base, "POST", "/api/projects", {"title": "cracknet review",
                                                  "label_config": (review / "label-studio" / "config.xml").read_text()})
    # Label Studio serves a local file only to a project with a local-files storage holding it
    api(base, "POST", "/api/storages/localfiles", {"project": project["id"], "title": "survey", "path": str(images),
                                                    "use_blob_urls": False})
    imported = api(base, "POST", f"/api/projects/{project['id']}/import", tasks)
    assert imported["task_count"] == 30 and imported["prediction_count"] == 30
    listed = api(base, "GET", f"/api/tasks?project={project['id']}&page_size=100")["tasks"]
    with urllib.request.urlopen(urllib.request.Request(base + listed[0]["data"]["image"],
                                                       headers={"Authorization": f"Token {TOKEN}"})) as r:
        assert r.read() == (files / listed[0]["data"]["image"].split("?d=", 1)[1]).read_bytes()
    # The reviewer: the true verdict, and the true crack drawn where there is one; one photo gets two verdicts
    # that disagree (a second look that changed its mind), which the import must report, not resolve.
    name = {t["id"]: Path(t["data"]["image_uri"]).stem for t in listed}
    true_mask = {n: read_mask((files / "survey" / "masks" / f"{n}.png").read_bytes()) for n in truth}
    disputed = next(t["id"] for t in listed if name[t["id"]] == "photo-00")
    for t in listed:
        cracked = bool(truth[name[t["id"]]])
        api(base, "POST", f"/api/tasks/{t['id']}/annotations/",
            {"result": verdict(cracked, true_mask[name[t["id"]]] if cracked else None)})
        if t["id"] == disputed:
            api(base, "POST", f"/api/tasks/{t['id']}/annotations/", {"result": verdict(not cracked)})
    export = tmp_path / "label-studio-export.json"
    export.write_bytes(api(base, "GET", f"/api/projects/{project['id']}/export?exportType=JSON&download_all_tasks=true",
                           raw=True))

    capsys.readouterr()
    tree = tmp_path / "labelled"
    assert cli_main(["review", "import", "--review", str(review), "--labels", str(export), "--output", str(tree)]) == 0
    printed = capsys.readouterr().out
    assert "1 photos with conflicting verdicts left out" in printed and f"conflict: {files}" in printed
    field = json.loads((review / "field.json").read_text())
    assert [c["image_uri"] for c in field["conflicts"]] == [str(images / f"{name[disputed]}.png")]
    # The tree: each reviewed photo once, its mask the one the reviewer drew (or all background)
    reviewed = {name[t["id"]] for t in listed} - {name[disputed]}
    masks = {p.stem: p for p in (tree / "masks").rglob("*.png")}
    assert set(masks) == reviewed and {p.stem for p in (tree / "images").rglob("*.png")} == reviewed
    for n in reviewed:
        drawn = np.asarray(Image.open(masks[n])) > 0
        assert np.array_equal(drawn, true_mask[n]) and (drawn.any() == bool(truth[n]))
    # In the field: the model says crack everywhere, so recall is 1 and precision the cracked share, weighted by
    # the design (targeted photos as themselves, random ones for their stratum).
    picks = {Path(p["image_uri"]).stem: p for p in field_selection(review)}
    tp = fp = 0.0
    strata = {}
    for n in reviewed:
        p = picks[n]
        strata.setdefault(p["stratum"], []).append(n)
    for stratum, names in strata.items():
        weight = 1.0 if stratum is None else picks[names[0]]["stratum_size"] / len(names)
        tp += weight * sum(bool(truth[n]) for n in names)
        fp += weight * sum(not truth[n] for n in names)
    metrics = field["field"]["metrics"]
    assert metrics["recall"] == 1.0 and metrics["precision"] == pytest.approx(tp / (tp + fp))
    assert field["field"]["masks"]["photos"] == len(reviewed) and 0 < field["field"]["masks"]["f1"] <= 1
    assert json.loads((results / "_reviews" / "review.json").read_text())["model_id"] == field["model_id"]
    card = json.loads(storage.read_bytes(f"{in_service}/model.json"))
    assert card["evaluations"]["field: review"]["precision"] == metrics["precision"]
    assert field["registry"] == "version 1 of crack-review tagged cracknet.field.review"
    tag = MlflowClient(mlflow_server).get_model_version("crack-review", "1").tags["cracknet.field.review"]
    assert json.loads(tag)["precision"] == metrics["precision"]
    assert cli_main(["report", "--results", str(results), "--output", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "report.html").read_text()
    assert "In the field" in page and f"{metrics['precision']:.3f} [" in page

    # The corrections are a labelled mask tree: a model is adapted from them, and measured on them
    assert cli_main(["train", "--data", str(tree), "--output", str(tmp_path / "adapted"), "--base-model", str(model),
                     "--epochs", "1", "--image-size", "64", "--batch-size", "4", "--num-workers", "1",
                     "--val-fraction", "0.25", "--test-fraction", "0.25", "--group-by", "none"]) == 0
    assert cli_main(["evaluate", "--model", str(tmp_path / "adapted"), "--data", f"inspectors={tree}"]) == 0
    # ... and the promotion gate weighs it against the model in service on what the inspectors labelled: a
    # one-epoch adaptation on 14 photos may pass or be refused; either is the gate doing its work.
    capsys.readouterr()
    gate = cli_main([*promote, "--model", upload(tmp_path / "adapted" / "model", "adapted"),
                     "--data", f"inspectors={tree}"])
    printed = capsys.readouterr()
    assert gate in (0, 1) and "inspectors" in printed.out + printed.err
    outcome("the adapted model was promoted" if gate == 0 else "the gate kept the model in service")


def upload(folder: Path, name: str) -> str:
    """A model folder copied to the S3 endpoint; its URI."""
    uri = f"s3://{BUCKET}/test_review/{name}"
    for path in folder.rglob("*"):
        if path.is_file():
            storage.write_bytes(f"{uri}/{path.relative_to(folder).as_posix()}", path.read_bytes())
    return uri


SDK_ROUND_TRIP = """
import json, sys
import numpy as np
from label_studio_sdk.converter.brush import decode_rle, mask2rle
given = json.load(sys.stdin)
mask = decode_rle(given["rle"]).reshape(given["h"], given["w"], 4)[:, :, 3] > 127
print(json.dumps({"mask": mask.astype(int).tolist(), "rle": [int(v) for v in mask2rle(mask.astype(np.uint8) * 255)]}))
"""


def field_selection(review: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(review / "selection.parquet").to_pylist()
