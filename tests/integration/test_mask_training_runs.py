"""Training crack-mask models on a real local Ray: a mixed tree, and a tree where every photo is cracked."""

import json

from cracknet.demo import synthetic
from cracknet.images.decoding import tile_boxes
from cracknet.model.masks import CrackSegmenter
from cracknet.model.network import classifier_of, load_artifact


def test_train_adapts_a_classifier_into_a_mask_model_on_a_mixed_tree(ray_cluster, random_model, tmp_path, capsys):
    from cracknet.cli import main as cli_main
    from cracknet.predict.scorer import Scorer

    tree = tmp_path / "tree"
    synthetic.generate_masked(str(tree), photos=24, size=96)
    synthetic.generate(str(tree), per_class=6, size=96, surface="asphalt")
    # Crops of 96 photo pixels seen at 32 px: a stated scale other than the photos' own (here one crop a photo).
    cli_main(["train", "--data", str(tree), "--output", str(tmp_path / "run"), "--epochs", "2", "--image-size", "32",
              "--source-size", "96", "--num-workers", "2", "--base-model", str(random_model)])
    out = capsys.readouterr().out
    assert "Found 36 labelled images" in out and "24 of them with crack masks" in out
    assert "on crops of 96 px of each photo seen at 32 px" in out
    assert "Crack masks: threshold " in out and " validation masks" in out
    model, card = load_artifact(str(tmp_path / "run"))
    assert isinstance(model, CrackSegmenter) and card["lineage"]["base_model"]["model_id"]
    assert card["mask"]["val"]["images"] + card["mask"]["test"]["images"] > 0
    assert 0.05 <= card["mask"]["threshold"] <= 0.95
    saved = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert saved["model_id"] == card["model_id"] and saved["decoder"]["channels"] > 0
    scorer = Scorer.load(str(tmp_path / "run"))
    found = scorer.predict([str(tree / "images" / "concrete-0000.jpg")])
    assert not found[0].error and 0.0 <= found[0].crack_probability <= 1.0
    assert classifier_of(scorer.model) is scorer.classifier


def test_a_mask_tree_where_every_photo_is_cracked_trains_in_crops_and_scores_at_that_scale(
        ray_cluster, random_model, tmp_path, capsys):
    """The public road-crack sets' case: every photo cracked, 1-5 px cracks, labels a few px off. The photos are
    cut into crops (the tiles scoring cuts) at their own scale, whose clean crops teach the head no_crack; the
    split keeps each photo whole, the masks are measured at the photos' own size, and the card's intervals
    resample photos."""
    from cracknet.cli import main as cli_main
    from cracknet.model.card import PHOTO_SIZE
    from cracknet.predict.evaluate import predict_tree
    from cracknet.predict.scorer import Scorer

    tree = tmp_path / "road"
    synthetic.generate_road_masks(str(tree), photos=10, width=128)
    assert all(json.loads((tree / "cracks.json").read_text()).values())  # every photo has a crack
    assert cli_main(["train", "--data", str(tree), "--output", str(tmp_path / "run"), "--epochs", "1",
                     "--image-size", "32", "--num-workers", "2", "--base-model", str(random_model)]) == 0
    out = capsys.readouterr().out
    assert "10 of them with crack masks" in out and "on crops of 32 px of each photo at its own scale" in out
    assert "Split by group (photo; groups " in out
    model, card = load_artifact(str(tmp_path / "run"))
    assert card["preprocessing"]["source_size"] == 32 and card["preprocessing"]["image_size"] == 32
    grouping = card["data"]["grouping"]
    assert grouping["by"] == "photo" and sum(grouping["groups"].values()) == 10
    assert not set(grouping["test_groups"]) & set(grouping["val_groups"])
    counts = card["data"]["counts"]
    assert all(counts[split]["no_crack"] > 0 and counts[split]["crack"] > 0 for split in counts)
    test = card["metrics"]["test"]
    assert test["interval_unit"] == "group" and test["groups"] == grouping["groups"]["test"]
    assert test["n"] == counts["test"]["crack"] + counts["test"]["no_crack"]
    mask = card["mask"]
    assert mask["measured_at"] == PHOTO_SIZE and mask["test"]["images"] == grouping["groups"]["test"]
    assert f"at {PHOTO_SIZE}" in out
    assert card["lineage"]["base_model_on_test"]["n"] == test["n"]  # the base model on the same crops
    assert mask["width_threshold"] >= mask["threshold"] and "cracks" in mask["width_validation"]
    scorer = Scorer.load(str(tmp_path / "run"))
    assert scorer.tiling.size == 32  # scoring cuts the photos as training did
    held = predict_tree(scorer, str(tree), split="test")  # the photos the run held out, whole
    assert sorted(uri.split("/images/")[1] for uri in held.uris) == sorted(
        group.split("images/")[1] for group in grouping["test_groups"])
    found = scorer.predict([str(next((tree / "images").iterdir()))])
    assert not found[0].error and len(found[0].tile_probabilities) == len(tile_boxes(128, 85, 32, 0.25)) == 20
