"""`cracknet report` from real (tiny) training and scoring outputs: valid PNGs, a self-contained HTML page."""

import io
import json
import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from cracknet import storage
from cracknet.cli import main as cli_main
from cracknet.demo.synthetic import concrete, draw_crack, image_bytes
from cracknet.model.network import build_model, save_artifact
from cracknet.report.scoring import _short_names, tile_map
from cracknet.score.config import ScoreConfig
from cracknet.score.driver import run_scoring

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


def _png(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


class Sources(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources, self.links = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("img", "script", "iframe", "source", "embed") and "src" in attrs:
            self.sources.append(attrs["src"])
        if tag == "link" and "href" in attrs:
            self.links.append(attrs["href"])


def test_report_of_a_training_run_an_evaluation_set_and_scoring_results(trained_run, labelled_tree, random_model,
                                                                         tmp_path):
    run, card = trained_run
    assert all("train_accuracy" in h for h in card["training"]["history"])

    rng = np.random.default_rng(5)
    survey = tmp_path / "survey"
    for i in range(10):
        img = concrete(rng, 64)
        if i % 2:
            draw_crack(img, rng)
        storage.write_bytes(str(survey / f"bridge-{i % 2}" / f"img{i}.jpg"), image_bytes(img))
    big = concrete(rng, 400)
    draw_crack(big, rng)
    storage.write_bytes(str(survey / "bridge-0" / "drone.jpg"), image_bytes(big))
    storage.write_bytes(str(survey / "bridge-$\\alpha_{$" / "odd.jpg"), image_bytes(concrete(rng, 64)))  # mathtext
    results = tmp_path / "results"
    run_scoring(ScoreConfig(model=str(run), input=str(survey), output=str(results)), log=lambda _: None)

    out = tmp_path / "report"
    assert cli_main(["report", "--model", str(run), "--data", str(labelled_tree), "--split", "test",
                     "--results", str(results), "--out", str(out)]) == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert {"training_curves.png", "confusion_matrix.png", "pr_roc_curves.png", "scoring_overview.png",
            "scoring_structures.png", "tile_map_1.png"} <= set(pngs)
    for name in pngs:
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.size[0] > 100

    page = (out / "report.html").read_text()
    parser = Sources()
    parser.feed(page)
    # Self-contained: every image is embedded, nothing is fetched.
    assert parser.sources and all(src.startswith("data:image/") for src in parser.sources)
    assert parser.links == [] and not re.search(r"""(src|href)=["']https?:""", page)
    assert len(parser.sources) >= len(pngs)
    for heading in ("Model card", "Training curves", "Evaluation", "Most confident false positives",
                    "missed cracks", "Scoring results", "Tile crack map", "Known limits"):
        assert heading in page
    assert card["model_id"] in page and str(survey / "bridge-0" / "drone.jpg") in page
    # --split test evaluates exactly the images the training run held out for its test.
    held_out = sum(card["data"]["counts"]["test"].values())
    assert f"<p>{held_out} images of {labelled_tree} (test split)" in page
    assert f"at or above {card['threshold']:.3f}" in page and "Scored by model" not in page

    # Results scored by another model than the report's: the page says whose thresholds it draws.
    other = tmp_path / "other-report"
    assert cli_main(["report", "--model", str(random_model), "--results", str(results), "--out", str(other)]) == 0
    assert f"Scored by model {card['model_id']}" in (other / "report.html").read_text()

    # A photo deleted since it was scored, and card text carrying markup: the report says so and still opens.
    (survey / "bridge-0" / "drone.jpg").unlink()
    run = tmp_path / "hostile-run"  # a copy: the trained run is shared
    shutil.copytree(trained_run[0] / "model", run / "model")
    hostile = json.loads((run / "model" / "model.json").read_text())
    hostile["data"]["counts"]["<script>split()</script>"] = {"crack": "<script>n()</script>"}
    hostile["evaluations"] = {"<script>name()</script>": {"data": "<img src=x onerror=alert(1)>", "images": "<b>",
                                                           "cracks": 1, "accuracy": 0.5}}
    (run / "model" / "model.json").write_text(json.dumps(hostile))
    degraded = tmp_path / "degraded-report"
    assert cli_main(["report", "--model", str(run), "--results", str(results), "--out", str(degraded)]) == 0
    page = (degraded / "report.html").read_text()
    assert "The map could not be drawn: " in page and "does not exist" in page
    assert "<script" not in page and "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&lt;script&gt;split()&lt;/script&gt;" in page and "&lt;script&gt;name()&lt;/script&gt;" in page
    parser = Sources()
    parser.feed(page)
    assert all(src.startswith("data:image/") for src in parser.sources)


def test_tile_map_tints_by_the_highest_covering_tile_and_outlines_the_flagged_area(tmp_path):
    grey = Image.new("RGB", (200, 100), (128, 128, 128))
    storage.write_bytes(str(tmp_path / "photo.png"), _png(grey))
    tiles = [{"tile_x": 0, "tile_y": 0, "tile_w": 100, "tile_h": 100, "crack_probability": 0.9},
             {"tile_x": 50, "tile_y": 0, "tile_w": 100, "tile_h": 100, "crack_probability": 0.2},
             {"tile_x": 100, "tile_y": 0, "tile_w": 100, "tile_h": 100, "crack_probability": 0.0}]
    with Image.open(io.BytesIO(tile_map(str(tmp_path / "photo.png"), tiles, threshold=0.5))) as img:
        out = np.asarray(img.convert("RGB")).astype(int)
    assert out.shape == (100, 200, 3)
    inside, overlap, low, clear = out[50, 40], out[50, 75], out[50, 125], out[50, 180]
    assert inside[0] > 128 > inside[1]  # tinted red, translucent: not pure red
    assert inside[1] > 50
    assert (overlap == inside).all()  # the overlap takes the higher tile
    assert low[0] > low[1] and (inside[0] - inside[1]) > 2 * (low[0] - low[1])
    assert (clear == 128).all()
    assert (out[50, 101] == (230, 0, 0)).all() and (out[50, 104] != (230, 0, 0)).any()  # outline just outside


def test_structure_names_drop_only_the_folders_they_share():
    assert _short_names(["s3://b/survey/tunnel-east", "s3://b/survey/bridge-north"]) == ["tunnel-east",
                                                                                          "bridge-north"]
    assert _short_names(["/a/bc", "/a/bd"]) == ["bc", "bd"]  # never half a folder name
    assert _short_names(["/a/b"]) == ["/a/b"]


def test_report_needs_only_the_model(ray_cluster, random_model, tmp_path, capsys):
    out = tmp_path / "just-the-model"
    assert cli_main(["report", "--model", str(random_model), "--output", str(out)]) == 0
    assert "report.html" in capsys.readouterr().out
    assert "Model card" in (out / "report.html").read_text()


@pytest.mark.parametrize("case, expected", [
    ("unreadable", "None of the 2 images under {data} could be read (the first: "),
    ("other data", "None of the 2 images under {data} is in the test split of the model's training run"),
    ("no splits", "does not record its splits; use --split all."),
    ("empty results", "holds no committed scoring results"),
])
def test_report_refuses_unusable_inputs_with_one_line_and_writes_nothing(random_model, tmp_path, capsys, case,
                                                                        expected):
    data, model = tmp_path / "data", random_model
    rng = np.random.default_rng(9)
    for label in ("crack", "no_crack"):
        content = b"not an image" if case == "unreadable" else image_bytes(concrete(rng, 32))
        storage.write_bytes(str(data / label / "one.jpg"), content)
    flags = ["--data", str(data)]
    if case == "other data":  # a card that records its splits, but put neither image in the test split
        model = tmp_path / "model"
        card = {**json.loads((random_model / "model.json").read_text()),
                "training": {"val_fraction": 1e-9, "test_fraction": 1e-9}}
        save_artifact(str(model), build_model().state_dict(), card)
        flags += ["--split", "test"]
    elif case == "no splits":  # a card without its training settings (a model trained elsewhere)
        model = tmp_path / "model"
        card = {k: v for k, v in json.loads((random_model / "model.json").read_text()).items() if k != "training"}
        save_artifact(str(model), build_model().state_dict(), card)
        flags += ["--split", "test"]
    elif case == "empty results":
        (tmp_path / "results").mkdir()
        flags = ["--results", str(tmp_path / "results")]
    out = tmp_path / "report"
    assert cli_main(["report", "--model", str(model), *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cracknet: error: ") and expected.format(data=data) in err and "\n" not in err
    assert not out.exists()
