"""Ray Train end to end on a real local Ray: 2 DDP workers on CPU (gloo), tiny images, few epochs."""

import json
import os

import numpy as np
import pytest
import torch
import torchvision
from conftest import BUCKET

from cracknet import storage
from cracknet.cli import main as cli_main
from cracknet.data.splits import split_of
from cracknet.data.trees import discover
from cracknet.measure.metrics import binary_metrics
from cracknet.measure.thresholds import operating_point_caveat, recall_lower_bound
from cracknet.model.card import in_split
from cracknet.model.network import load_artifact
from cracknet.predict.evaluate import predict_tree
from cracknet.predict.scorer import Scorer
from cracknet.storage import content_hash
from cracknet.train.config import TrainConfig, batch_size_for
from cracknet.train.driver import run_training

pytestmark = pytest.mark.ray


def tiny(data, output, **overrides):
    settings = dict(data=str(data), output=str(output), epochs=2, image_size=32, batch_size=8, num_workers=2,
                    weights="none", warmup_epochs=0.2)
    return TrainConfig(**{**settings, **overrides})


def split_images(root, split):
    out = []
    for image in discover(str(root)):
        if split_of(content_hash(storage.read_bytes(image.uri)), 0.15, 0.15) == split:
            out.append(image)
    return out


def test_ddp_training_writes_a_complete_self_describing_artifact(trained_run, labelled_tree, tmp_path):
    run, card = trained_run
    folder = run / "model"
    assert sorted(os.listdir(folder)) == ["model.json", "weights.pt"]
    on_disk = json.loads((folder / "model.json").read_text())
    assert on_disk["model_id"] == card["model_id"]
    training = on_disk["training"]
    assert training["epochs_completed"] == 2 and training["restarts"] == 0
    assert [h["epoch"] for h in training["history"]] == [1, 2]
    assert training["history"][0]["train_images"] == training["history"][1]["train_images"] > 0
    assert sum(sum(c.values()) for c in on_disk["data"]["counts"].values()) == 120
    assert on_disk["preprocessing"]["source_size"] in (227, 96)  # METU patches or generated ones
    assert on_disk["preprocessing"]["image_size"] == 32 and on_disk["class_names"] == ["no_crack", "crack"]
    assert 0 < on_disk["threshold"] < 1 and len(on_disk["data"]["fingerprint"]) == 64
    assert set(on_disk["versions"]) >= {"torch", "torchvision", "ray", "cracknet"}
    # The weights are a plain tensor dict.
    torch.load(folder / "weights.pt", weights_only=True)

    # The test metrics in the card are reproduced by scoring the test split outside Ray, through the scorer
    # `evaluate` and `score` use.
    scorer = Scorer.load(str(run))
    read = scorer.card
    test = split_images(labelled_tree, "test")
    found = predict_tree(scorer, str(labelled_tree), split="test")
    probs, labels = found.probs, found.labels
    recomputed = binary_metrics(probs, labels, read["threshold"])
    assert recomputed["n"] == on_disk["metrics"]["test"]["n"] == len(test)
    assert recomputed["roc_auc"] == pytest.approx(on_disk["metrics"]["test"]["roc_auc"], abs=1e-6)
    assert set(on_disk["metrics"]["test"]["intervals_95"]) >= {"recall", "precision", "roc_auc", "average_precision"}

    # The card's operating point is what the threshold does on the validation split (recomputed outside Ray).
    assert on_disk["operating_point"]["target_recall"] == 0.98
    val = split_images(labelled_tree, "val")
    found = predict_tree(scorer, str(labelled_tree), split="val")
    assert len(found.uris) == len(val)
    val_probs, val_labels = found.probs, found.labels
    at_threshold = binary_metrics(val_probs, val_labels, read["threshold"])
    # About 9 validation cracks cannot show 98% recall with 95% confidence: the threshold is estimated from
    # their spread, and the card and the caveat say so.
    point = on_disk["operating_point"]
    assert point["confidence"] == 0.95 and point["positives"] == int(val_labels.sum())
    assert not point["backed"] and point["val_recall"] == pytest.approx(at_threshold["recall"])
    assert point["recall_lower_bound"] == pytest.approx(
        recall_lower_bound(at_threshold["tp"], point["positives"], 0.95))
    assert "too few to show recall >= 0.98" in operating_point_caveat(point)

    # `cracknet evaluate` on the same tree prints and writes the same kind of report.
    report_path = tmp_path / "eval.json"
    assert cli_main(["evaluate", "--model", str(run), "--data", str(labelled_tree),
                     "--json", str(report_path), "--target-recall", "0.9"]) == 0
    report = json.loads(report_path.read_text())
    assert report["model_id"] == card["model_id"] and report["metrics"]["n"] == 120
    assert set(report["metrics"]) >= {"accuracy", "precision", "recall", "f1", "roc_auc", "average_precision"}
    chosen = report["for_target_recall"]
    # The recall target is met, unless meeting it would flag more than 10% of the clean images.
    assert chosen["metrics"]["recall"] >= 0.9 or chosen["limited_by"] == "false_alarms"
    assert chosen["metrics"]["fp"] <= 0.1 * (chosen["metrics"]["fp"] + chosen["metrics"]["tn"])


def test_the_default_batch_keeps_eight_steps_an_epoch_for_small_sets():
    assert TrainConfig(data="d", output="o").batch_size is None  # chosen once the train split is known
    assert batch_size_for(3485, 2) == 64  # the METU dev set's train split: the full batch
    assert batch_size_for(209, 2) == 13 and 209 // (2 * 13) == 8  # 300 labelled tiles of a new surface
    assert batch_size_for(209, 1) == 26
    assert batch_size_for(60, 2) == 8  # never under 8 images per worker


@pytest.fixture(scope="module")
def concrete_model(ray_cluster, synthetic_tree, tmp_path_factory):
    """A model fine-tuned in two stages from a state-dict file on the generated concrete surface."""
    folder = tmp_path_factory.mktemp("concrete-model")
    torch.manual_seed(1)
    start = torchvision.models.resnet50(weights=None).state_dict()
    torch.save(start, folder / "start.pth")
    card = run_training(tiny(synthetic_tree, folder / "run", weights=str(folder / "start.pth"), head_epochs=1),
                        log=lambda _: None)
    return card, start, folder / "run"


def test_two_stage_fine_tuning_freezes_then_trains_the_backbone(concrete_model):
    card, start, run = concrete_model
    assert [h["stage"] for h in card["training"]["history"]] == ["head", "all"]

    first = torch.load(run / "checkpoints" / "train" / "epoch-0001" / "state.pt", weights_only=True)
    backbone = [k for k in start if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    # Stage one: the backbone (BatchNorm statistics included) is exactly the starting weights.
    assert all(torch.equal(first["model"][k], start[k]) for k in backbone)
    final, _ = load_artifact(str(run))
    changed = [k for k in backbone if not torch.equal(final.state_dict()[k], start[k])]
    assert len(changed) > len(backbone) // 2


def test_adapting_a_model_to_a_new_surface_in_object_storage_records_its_lineage(concrete_model, s3_endpoint,
                                                                                  tmp_path, capsys):
    """``--base-model`` and the data on s3:// (with an unreadable file, skipped and counted), output on disk; the
    tiles sit in photo folders (``<label>/<photo>/<tile>``), so the split keeps each photo's tiles together."""
    from cracknet.demo.synthetic import generate
    from cracknet.report.build import build_report

    base, _, base_run = concrete_model
    base_uri, data = (f"s3://{BUCKET}/adapt/{name}" for name in ("base", "asphalt"))
    output = str(tmp_path / "run")
    for name in ("model.json", "weights.pt"):
        storage.write_bytes(f"{base_uri}/{name}", (base_run / "model" / name).read_bytes())
    asphalt = tmp_path / "asphalt"
    generate(str(asphalt), per_class=30, size=64, seed=3, surface="asphalt")
    for path in asphalt.rglob("*.jpg"):  # crack/crack-00007.jpg -> crack/photo1/crack-00007.jpg: 6 photos
        photo = f"photo{int(path.stem.split('-')[1]) % 6}"
        storage.write_bytes(f"{data}/{path.parent.name}/{photo}/{path.name}", path.read_bytes())
    storage.write_bytes(f"{data}/crack/truncated.jpg", b"\xff\xd8\xff\xe0 cut short")
    assert cli_main(["train", "--data", data, "--output", output, "--base-model", base_uri, "--epochs", "2",
                     "--num-workers", "2", "--warmup-epochs", "0.2",
                     "--max-bad-fraction", "0.05", "--source-size", "128"]) == 0
    printed = capsys.readouterr().out
    model, card = load_artifact(output)
    assert card["folder"] == f"{output}/model" and card["data"]["uri"] == data and card["data"]["unreadable"] == 1

    # Whole photos per split, recorded in the card and printed.
    grouping = card["data"]["grouping"]
    assert grouping["by"] == "folder" and grouping["groups"] == {"train": 4, "val": 1, "test": 1}
    assert len(grouping["test_groups"]) == 1 and set(grouping["test_groups"]).isdisjoint(grouping["val_groups"])
    assert 'Split by group (folder; groups {"train": 4, "val": 1, "test": 1})' in printed
    test = [i for i in discover(data) if i.uri.split("/")[-2] in grouping["test_groups"]]
    in_test = in_split(card, "test", data)
    assert [i for i in discover(data) if in_test(i.uri, "")] == test and len(test) == 10
    # The test interval resamples that one photo's tiles together, and says so.
    assert card["metrics"]["test"]["interval_unit"] == "group" and card["metrics"]["test"]["groups"] == 1
    assert "n=10, 1 group resampled whole)" in printed and "Note: The 10 images come from only 1 group " in printed

    # The base model's normalisation, at the new tiles' own side (64 px) rather than the base's 32 px; strong
    # augmentation and the best epoch by default.
    assert base["preprocessing"]["image_size"] == 32 and card["preprocessing"]["image_size"] == 64
    assert card["preprocessing"]["mean"] == list(base["preprocessing"]["mean"])
    assert card["preprocessing"]["source_size"] == 128  # the tile scale named, not the images' 64 px
    training = card["training"]
    assert training["batch_size"] == batch_size_for(card["data"]["counts"]["train"]["crack"] +
                                                    card["data"]["counts"]["train"]["no_crack"], 2) == 8
    assert training["augmentation"] == "auto" and training["keep"] == "auto" and training["base_model"] == base_uri
    assert [h["stage"] for h in training["history"]] == ["head", "all"]
    losses = [h["val_loss"] for h in training["history"]]
    assert training["kept_epoch"] == 1 + int(np.argmin(losses))
    last = torch.load(f"{output}/checkpoints/train/epoch-0002/state.pt", weights_only=True)
    assert last["best"]["epoch"] == training["kept_epoch"]
    kept = last["model"] if last["best"]["model"] is None else last["best"]["model"]  # None: the last epoch's
    assert (last["best"]["model"] is None) == (training["kept_epoch"] == 2)
    assert all(torch.equal(model.state_dict()[k], kept[k].contiguous()) for k in last["model"])

    # Lineage: the base model, and how it did on this test split before adaptation (recomputed here).
    lineage = card["lineage"]
    assert lineage["base_model"]["model_id"] == base["model_id"] and lineage["base_model"]["uri"] == base_uri
    assert lineage["base_model"]["data_fingerprint"] == base["data"]["fingerprint"]
    before = Scorer.load(str(base_run)).predict([i.uri for i in test])
    recomputed = binary_metrics(np.array([p.crack_probability for p in before]), np.array([i.label for i in test]),
                                base["threshold"])
    assert lineage["base_model_on_test"]["n"] == card["metrics"]["test"]["n"] == len(test)
    assert lineage["base_model_on_test"]["accuracy"] == pytest.approx(recomputed["accuracy"])
    assert f"Adapted from {base_uri} (model_id {base['model_id']})" in printed
    # Evaluation and the report give one row per photo, the worst first.
    assert cli_main(["evaluate", "--model", output, "--data", data]) == 0
    printed = capsys.readouterr().out
    assert "Per group (folder), 6 groups:" in printed and printed.count("\nphoto") == 6
    assert "n=60, 6 groups resampled whole)" in printed and "come from only 6 groups" in printed
    build_report(output, str(tmp_path / "report"), data=data)
    page = (tmp_path / "report" / "report.html").read_text()
    assert "adapted from" in page and "Per group (folder): 6 groups" in page
    assert "95% bootstrap intervals over 1 group of 10 images, resampled whole" in page
    assert "95% bootstrap intervals over 6 groups of 60 images, resampled whole" in page

    # A base model that is not there fails before any cluster work, in one sentence.
    assert cli_main(["train", "--data", data, "--output", f"{output}-2", "--base-model",
                     str(tmp_path / "missing")]) == 2
    assert "holds no finished model" in capsys.readouterr().err


def test_the_demo_adapts_its_model_to_a_surface_it_never_saw_and_records_both(concrete_model, tmp_path):
    """`cracknet demo --adapt`'s step: measure on generated asphalt, adapt, measure again; both in the cards."""
    import shutil

    from cracknet.demo.run import NEW_SURFACE, adapt_demo
    from cracknet.model.card import read_card

    _, _, base_run = concrete_model
    shutil.copytree(base_run / "model", tmp_path / "base")
    base = read_card(str(tmp_path / "base"))
    said = []
    done = adapt_demo(base, str(tmp_path / "demo"), epochs=2, image_size=32, per_class=(30, 20), say=said.append)
    assert said[0].startswith(f"A surface the model never saw, {tmp_path}/demo/asphalt-holdout (generated asphalt): "
                              f"accuracy {done['before']['metrics']['accuracy']:.3f}")
    assert [line.split(" (")[0] for line in said if line.startswith("Epoch")] == ["Epoch 1/2", "Epoch 2/2"]
    card = read_card(done["card"]["folder"])
    assert card["lineage"]["base_model"]["model_id"] == base["model_id"]
    for model, report in ((read_card(str(tmp_path / "base")), done["before"]), (card, done["after"])):
        row = model["evaluations"][NEW_SURFACE]
        assert row["images"] == 40 and row["cracks"] == 20
        assert row["accuracy"] == pytest.approx(report["metrics"]["accuracy"])
    assert read_card(str(tmp_path / "base"))["model_id"] == base["model_id"]  # recording changed no weights


def test_relative_paths_work_for_training_and_scoring(ray_cluster, synthetic_tree, tmp_path, monkeypatch):
    """Ray runs workers in folders of their own: relative paths must mean the caller's folder."""
    import shutil

    from cracknet.score.config import ScoreConfig
    from cracknet.score.driver import run_scoring

    shutil.copytree(synthetic_tree, tmp_path / "data")
    (tmp_path / "survey").mkdir()
    for path in sorted((tmp_path / "data" / "crack").glob("*.jpg"))[:3]:
        shutil.copy(path, tmp_path / "survey" / path.name)
    monkeypatch.chdir(tmp_path)

    card = run_training(tiny("data", "run", epochs=1, num_workers=1), log=lambda _: None)
    assert card["folder"] == str(tmp_path / "run" / "model") and card["data"]["uri"] == str(tmp_path / "data")
    assert (tmp_path / "run" / "model" / "model.json").exists()
    assert list((tmp_path / "run" / "checkpoints" / "train").glob("epoch-0001/state.pt"))
    scored = run_scoring(ScoreConfig(model="run", input="survey", output="results"), log=lambda _: None)
    assert (scored["scored"], scored["errors"], scored["output"]) == (3, 0, str(tmp_path / "results"))
    assert len(list((tmp_path / "results").glob("run_date=*/*.parquet"))) >= 1


def test_adapting_trains_at_the_new_tiles_own_side_up_to_128_px(tmp_path):
    from PIL import Image

    from cracknet.train.driver import default_image_size

    def tree(side):
        root = tmp_path / str(side)
        for label in ("crack", "no_crack"):
            (root / label).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (side, side * 3 // 4)).save(root / label / f"{i}.jpg")
        (root / "crack" / "bad.jpg").write_bytes(b"not an image")
        return discover(str(root))

    base = {"preprocessing": {"image_size": 64}}
    tiles = tree(96)
    assert default_image_size(None, tiles) == 224  # not adapting: ResNet50's own
    assert default_image_size(base, tiles) == 96  # not shrunk to the base's 64
    assert default_image_size(base, tree(227)) == 128  # at most 128
    assert default_image_size(base, tree(40)) == 64  # never below the base's


def test_each_start_gets_its_recipe_unless_the_flags_say_otherwise(tmp_path):
    """Random init: one stage at --lr; a pretrained start and a crack model made from one: a head epoch, then all
    at 3e-4; a crack model trained from random init: all at 1e-4 (bench/pretrained_start.py, bench/adapt.py)."""
    from conftest import model_card

    from cracknet.demo.synthetic import generate
    from cracknet.model.network import build_model, save_artifact
    from cracknet.train.driver import resolve_settings

    generate(str(tmp_path / "data"), per_class=2, size=32)
    bases = {}
    for name, training in (("scratch", {"weights": "none"}), ("imagenet", {"weights": "imagenet"}),
                           ("adapted", {"weights": "none", "base_model": "elsewhere"})):
        bases[name] = str(tmp_path / name)
        save_artifact(bases[name], build_model().state_dict(), {**model_card(), "training": training})

    def recipe(**settings):
        cfg = resolve_settings(TrainConfig(data=str(tmp_path / "data"), output=str(tmp_path / "out"), **settings))[0]
        return cfg.stage_epochs[0], cfg.finetune_lr

    assert recipe(weights="none")[0] == 0
    assert recipe(weights=str(tmp_path / "start.pth")) == (1, 3e-4)
    assert recipe(base_model=bases["imagenet"]) == recipe(base_model=bases["adapted"]) == (1, 3e-4)
    assert recipe(base_model=bases["scratch"]) == (1, 1e-4)
    assert recipe(base_model=bases["scratch"], finetune_lr=5e-4, head_epochs=0) == (0, 5e-4)
