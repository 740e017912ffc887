"""`cracknet evaluate` on trees that are fine to evaluate but not to train on."""

import json
import shutil

from conftest import model_card

from cracknet.cli import main as cli_main
from cracknet.model.network import build_model, save_artifact


def test_evaluate_one_class_tree_with_an_unreadable_file(synthetic_tree, tmp_path):
    save_artifact(str(tmp_path / "model"), build_model().state_dict(), model_card())
    data = tmp_path / "known-cracks"
    shutil.copytree(synthetic_tree / "crack", data / "crack")
    (data / "crack" / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    out = tmp_path / "report.json"
    assert cli_main(["evaluate", "--model", str(tmp_path / "model"), "--data", str(data),
                     "--json", str(out)]) == 0
    report = json.loads(out.read_text())  # strict JSON: no NaN
    assert report["images"] == 41 and report["metrics"]["n"] == 40
    assert report["metrics"]["roc_auc"] is None
    assert [u["uri"].rsplit("/", 1)[-1] for u in report["unreadable"]] == ["broken.jpg"]


def test_evaluate_several_surfaces_prints_a_row_each_and_records_them(synthetic_tree, tmp_path, capsys):
    from cracknet.model.card import read_card
    from cracknet.model.network import load_artifact
    from cracknet.report.build import build_report

    card = save_artifact(str(tmp_path / "model"), build_model().state_dict(), model_card())
    known_cracks = tmp_path / "known-cracks"
    shutil.copytree(synthetic_tree / "crack", known_cracks / "crack")
    assert cli_main(["evaluate", "--model", str(tmp_path / "model"), "--data", f"concrete={synthetic_tree}",
                     "--data", str(known_cracks), "--record", "--json", str(tmp_path / "both.json")]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("surface ")):]
    assert table[1].split()[:3] == ["concrete", "80", "40"] and table[2].split()[:3] == ["known-cracks", "40", "40"]
    assert table[2].split()[-1] == "n/a"  # no crack-free image: no AUC
    both = json.loads((tmp_path / "both.json").read_text())
    assert set(both["surfaces"]) == {"concrete", "known-cracks"}

    recorded = read_card(str(tmp_path / "model"))["evaluations"]
    assert recorded["concrete"]["accuracy"] == both["surfaces"]["concrete"]["metrics"]["accuracy"]
    assert recorded["known-cracks"]["cracks"] == 40 and recorded["known-cracks"]["roc_auc"] is None
    _, reloaded = load_artifact(str(tmp_path / "model"))  # weights still match the card's hash
    assert reloaded["model_id"] == card["model_id"]
    page = (tmp_path / "report").joinpath("report.html")
    build_report(str(tmp_path / "model"), str(tmp_path / "report"))
    assert "Measured on other surfaces" in page.read_text() and "known-cracks" in page.read_text()

    # Evaluating a surface again replaces its row; without --record the card is left alone.
    assert cli_main(["evaluate", "--model", str(tmp_path / "model"), "--data", f"concrete={known_cracks}",
                     "--record"]) == 0
    assert read_card(str(tmp_path / "model"))["evaluations"]["concrete"]["images"] == 40
    before = (tmp_path / "model" / "model.json").read_bytes()
    assert cli_main(["evaluate", "--model", str(tmp_path / "model"), "--data", str(synthetic_tree)]) == 0
    assert (tmp_path / "model" / "model.json").read_bytes() == before


def test_surface_names():
    from cracknet.predict.evaluate import parse_surface

    assert parse_surface("bridge-a=s3://labels/bridge-a") == ("bridge-a", "s3://labels/bridge-a")
    assert parse_surface("s3://labels/run=3/") == ("run=3", "s3://labels/run=3/")
    assert parse_surface("/data/tunnel") == ("tunnel", "/data/tunnel")
    assert cli_main(["evaluate", "--model", "m", "--data", "a=/x", "--data", "a=/y"]) == 2
