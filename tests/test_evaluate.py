"""`cracknet evaluate` on trees that are fine to evaluate but not to train on."""

import json
import shutil

from cracknet.cli import main as cli_main
from cracknet.model import build_model, save_artifact

from conftest import model_card


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
