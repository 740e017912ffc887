"""`evaluate` and `score` say the same about every image, and large photos are scored in bounded memory."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, model_card
from PIL import Image, ImageDraw

from cracknet.model.network import build_model, save_artifact
from cracknet.predict.evaluate import predict_tree
from cracknet.predict.scorer import Scorer
from cracknet.score.config import ScoreConfig
from cracknet.score.driver import run_scoring
from cracknet.table.query import run_query


def mosaic(patches: list[Path], across: int, down: int) -> Image.Image:
    tiles = [Image.open(p).convert("RGB") for p in patches]
    side = tiles[0].width
    out = Image.new("RGB", (across * side, down * side))
    for j, tile in enumerate(tiles[:across * down]):
        out.paste(tile.resize((side, side)), ((j % across) * side, (j // across) * side))
    return out


@pytest.fixture(scope="module")
def varied_model(tmp_path_factory, labelled_tree):
    """A random ResNet50 whose head spreads its outputs (a random one says nearly the same of every image),
    trained, as its card says, on patches of the labelled tree's size: patches are scored whole."""
    torch.manual_seed(3)
    model = build_model()
    torch.nn.init.normal_(model.fc.weight, std=2.0)
    side = max(Image.open(next((labelled_tree / "crack").glob("*"))).size)
    folder = tmp_path_factory.mktemp("varied-model") / "model"
    save_artifact(str(folder), model.state_dict(), model_card(image_size=32, source_size=side, threshold=0.5))
    return folder


@pytest.mark.ray
def test_evaluate_and_score_give_each_image_the_same_probability_and_verdict(ray_cluster, labelled_tree,
                                                                               varied_model, tmp_path):
    tree = tmp_path / "tree"
    for label in ("crack", "no_crack"):
        patches = sorted((labelled_tree / label).glob("*"))
        (tree / label).mkdir(parents=True)
        for p in patches[:6]:
            shutil.copy(p, tree / label / p.name)
        mosaic(patches[6:18], 4, 3).save(tree / label / "photo.jpg", quality=90)  # tiled: larger than 1.5 tiles
    scorer = Scorer.load(str(varied_model))
    evaluated = predict_tree(scorer, str(tree))
    by_evaluate = dict(zip(evaluated.uris, evaluated.probs.tolist()))

    summary = run_scoring(ScoreConfig(model=str(varied_model), input=str(tree), output=str(tmp_path / "results"),
                                      batch_size=16), log=lambda _: None)
    assert summary["scored"] == len(by_evaluate) == 14 and summary["errors"] == 0
    rows = run_query(str(tmp_path / "results"),
                     "SELECT image_uri, crack_probability, is_crack, tiles_scored FROM images").to_pylist()
    by_score = {r["image_uri"]: r for r in rows}
    assert set(by_score) == set(by_evaluate)
    assert all(by_score[str(tree / label / "photo.jpg")]["tiles_scored"] > 1 for label in ("crack", "no_crack"))
    assert sum(r["tiles_scored"] == 1 for r in rows) == 12  # the patches, whole
    spread = max(by_evaluate.values()) - min(by_evaluate.values())
    assert spread > 0.05, "the model must tell these images apart for the comparison to mean anything"
    for uri, probability in by_evaluate.items():
        assert by_score[uri]["crack_probability"] == pytest.approx(probability, abs=1e-3), uri
        assert by_score[uri]["is_crack"] == (probability >= scorer.threshold), uri


MEMORY_RUN = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    from cracknet.model.card import preprocessing_of, read_card
    from cracknet.score.driver import CrackPredictor, read_and_tile
    from cracknet.predict.scorer import Tiling

    model, root, *photos = sys.argv[1:]
    card = read_card(model)
    tiling = Tiling(896, 0.25)
    predictor = CrackPredictor(model, card["model_id"], batch_tiles=32, tiling=tiling, threads=2)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    batch = {"image_uri": np.asarray(photos, dtype=object), "version": np.asarray([""] * len(photos), dtype=object)}
    scored, most = 0, 0
    for block in read_and_tile(batch, preprocessing_of(card), tiling, root, tiles_per_pack=32):
        out = predictor(block)
        most = max(most, sum(len(t) for t in block["tiles"]))
        scored += int((out["tiles_scored"] > 0).sum())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"loaded_mb": loaded / 1024, "peak_mb": peak / 1024, "scored": scored, "most_tiles": most}))
""")


def test_48_megapixel_photos_score_in_memory_that_does_not_grow_with_photos_per_batch(tmp_path):
    """8000 x 6000 JPEGs in one read batch, 224 px model, 896 px tiles (the JPEG decodes at 1/4): the peak
    of the scoring process with five photos per batch is that with two (a block and the next photo), not
    more: tiles reach the model in blocks of about one model call, and no photo is held at full size."""
    pixels = np.linspace(60, 200, 8000, dtype=np.uint8)[None, :, None].repeat(6000, 0).repeat(3, 2)
    photo = Image.fromarray(pixels)
    draw = ImageDraw.Draw(photo)
    for k in range(40):
        draw.line([(200 * k, 0), (8000 - 150 * k, 6000)], fill=(20, 20, 20), width=6)
    photo.save(tmp_path / "p0.jpg", quality=85)
    del photo, pixels, draw
    for k in range(1, 5):
        shutil.copy(tmp_path / "p0.jpg", tmp_path / f"p{k}.jpg")
    model = tmp_path / "model"
    save_artifact(str(model), build_model().state_dict(), model_card(image_size=224, source_size=896))

    def run(photos: list[str]) -> dict:
        done = subprocess.run([sys.executable, "-c", MEMORY_RUN, str(model), str(tmp_path), *photos], cwd=REPO,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    two = run([str(tmp_path / f"p{k}.jpg") for k in range(2)])
    five = run([str(tmp_path / f"p{k}.jpg") for k in range(5)])
    assert two["scored"] == 2 and five["scored"] == 5
    # 108 tiles per photo, handed on in blocks of about one model call (32 tiles) plus the rest of one photo.
    assert five["most_tiles"] <= 32 + 108
    # Three more photos' tiles at 224 px, held and copied into one model input, would be about 100 MB more;
    # their full-size decodes 430 MB more.
    grown = (five["peak_mb"] - five["loaded_mb"]) - (two["peak_mb"] - two["loaded_mb"])
    assert grown < 45, (two, five)
    # A full-size decode of one photo alone is 144 MB: the whole run stays within about two of them.
    assert five["peak_mb"] - five["loaded_mb"] < 320, five
