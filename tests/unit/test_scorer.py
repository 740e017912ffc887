"""The one inference path: reading, tiling, precision and batching shared by validation, evaluate and score."""

import io
import json

import numpy as np
import pytest
import torch
from helpers import DRONE_BASE, DRONE_DETAILS, DRONE_GPS, dji_xmp, jpeg
from PIL import Image

import cracknet
from cracknet.errors import CracknetError
from cracknet.images.decoding import Preprocessing
from cracknet.predict.scorer import Scorer, Tiling, read_image


def concrete_png(path, rng, size=96) -> np.ndarray:
    pixels = rng.integers(90, 170, size=(size, size, 3), dtype=np.uint8)
    pixels[size // 2, :, :] = 20  # a dark line
    Image.fromarray(pixels).save(path, format="PNG")
    return pixels


def test_load_model_predicts_paths_pictures_and_arrays_alike(random_model, tmp_path):
    rng = np.random.default_rng(0)
    pixels = concrete_png(tmp_path / "a.png", rng)
    model = cracknet.load_model(str(random_model))
    by_path, by_picture, by_array, missing = model.predict(
        [tmp_path / "a.png", Image.fromarray(pixels), pixels, str(tmp_path / "nope.png")])
    assert by_path.error == "" and 0.0 <= by_path.crack_probability <= 1.0
    assert by_picture.crack_probability == pytest.approx(by_path.crack_probability, abs=1e-6)
    assert by_array.crack_probability == pytest.approx(by_path.crack_probability, abs=1e-6)
    assert by_path.is_crack == (by_path.crack_probability >= model.threshold)
    assert "does not exist" in missing.error and np.isnan(missing.crack_probability) and not missing.is_crack
    # The path is read exactly as the nightly job reads it.
    found = read_image(str(tmp_path / "a.png"), model.spec, model.tiling)
    assert model.score([found.tiles])[0][0] == pytest.approx(by_path.crack_probability, abs=1e-6)


def test_a_model_call_takes_8_tiles_in_float32_on_a_cpu_and_64_in_bf16_unless_asked(random_model):
    from cracknet.model.precision import Precision
    from cracknet.predict.scorer import call_tiles

    cpu = torch.device("cpu")
    assert call_tiles(cpu, Precision(None, channels_last=True)) == 8
    assert call_tiles(cpu, Precision(torch.bfloat16, channels_last=True)) == 64
    assert call_tiles(torch.device("cuda"), Precision(torch.bfloat16, channels_last=True)) == 64
    fp32 = Scorer.load(str(random_model), fp32=True)
    assert fp32.precision.autocast_dtype is None and fp32.batch_tiles == 8
    assert Scorer.load(str(random_model), batch_tiles=20).batch_tiles == 20  # asked for: kept
    calls = []
    fp32.model.register_forward_pre_hook(lambda _module, args: calls.append(len(args[0])))
    fp32.score([np.zeros((19, 32, 32, 3), dtype=np.uint8)])
    assert calls == [8, 8, 8]


def test_model_calls_count_tiles_not_images(random_model):
    scorer = Scorer.load(str(random_model), batch_tiles=5)
    calls = []
    scorer.model.register_forward_pre_hook(lambda _module, args: calls.append(len(args[0])))
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, size=(n, 32, 32, 3), dtype=np.uint8) for n in (1, 7, 3)]
    best, per_tile = scorer.score([images[0], images[1], None, images[2]])
    assert calls == [5, 5, 5]  # 11 tiles: two full calls and a padded one, all of one shape
    alone = [scorer.tile_probabilities(t) for t in images]
    for got, want in zip([per_tile[0], per_tile[1], per_tile[3]], alone):
        np.testing.assert_array_equal(got, want)  # the same kernels whatever a tile's neighbours
    assert len(per_tile[2]) == 0 and np.isnan(best[2])
    np.testing.assert_allclose(best[[0, 1, 3]], [p.max() for p in per_tile if len(p)], atol=0)


def test_a_compiled_model_scores_like_the_eager_one(random_model):
    rng = np.random.default_rng(4)
    tiles = rng.integers(0, 255, size=(6, 32, 32, 3), dtype=np.uint8)
    eager = Scorer.load(str(random_model), batch_tiles=4)
    compiled = Scorer.load(str(random_model), batch_tiles=4, compile=True)
    assert hasattr(compiled.classify, "_orig_mod") and not hasattr(eager.classify, "_orig_mod")
    got, want = compiled.tile_probabilities(tiles), eager.tile_probabilities(tiles)
    # bf16 kernels fused differently: close, not bit-equal (bench/score_numerics.py measures it on a real model).
    np.testing.assert_allclose(got, want, atol=0.02)


def test_a_model_replaced_during_a_run_is_refused(random_model):
    assert Scorer.load(str(random_model)).model_id  # the model the driver named
    with pytest.raises(CracknetError, match="replaced during the run"):
        Scorer.load(str(random_model), model_id="0123456789abcdef")


def test_a_large_jpeg_is_decoded_once_at_a_reduced_scale(tmp_path):
    """Tiles of 256 source pixels at a 32-pixel model: the JPEG decodes at 1/8 size, tiles keep photo pixels."""
    rng = np.random.default_rng(2)
    photo = Image.fromarray(rng.integers(0, 255, size=(1200, 1600, 3), dtype=np.uint8))
    photo.save(tmp_path / "p.jpg", quality=90)
    spec = Preprocessing(32)
    found = read_image(str(tmp_path / "p.jpg"), spec, Tiling(256, 0.0))
    assert found.error == "" and (found.width, found.height) == (1600, 1200)
    assert found.tiles.shape == (7 * 5, 32, 32, 3)
    assert found.boxes[-1].tolist() == [1600 - 256, 1200 - 256, 256, 256]
    # The same tile cut from a full-size decode differs only by the DCT-domain reduction.
    full = np.asarray(photo.resize((200, 150), Image.Resampling.BILINEAR), dtype=np.float32)
    assert abs(found.tiles.astype(np.float32).mean() - full.mean()) < 2.0


def test_batch_decoding_on_the_device_matches_the_cpu_path_within_resize_tolerance(random_model, labelled_tree,
                                                                                  tmp_path):
    """The GPU path (torchvision's decode_jpeg, tiling and resizing as tensors) checked on the CPU, where the same
    API runs: whole patches and a tiled photo give the same tiles to within resampling differences, and
    what the device path cannot take (a PNG, a CMYK JPEG, a broken file) is left to the CPU path."""
    from cracknet.images.decoding import decode_tiles
    from cracknet.predict.scorer import tiles_on_device

    scorer = Scorer.load(str(random_model))
    patches = [p.read_bytes() for p in sorted((labelled_tree / "crack").glob("*"))[:4]]
    photo = Image.new("RGB", (700, 500))
    for j, p in enumerate(sorted((labelled_tree / "no_crack").glob("*"))[:6]):
        photo.paste(Image.open(p).convert("RGB").resize((240, 240)), ((j % 3) * 240, (j // 3) * 240))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=92)
    cmyk = io.BytesIO()
    photo.convert("CMYK").save(cmyk, format="JPEG")
    png = io.BytesIO()
    photo.save(png, format="PNG")
    datas = patches + [buffer.getvalue(), cmyk.getvalue(), png.getvalue(), b"\xff\xd8\xff broken"]
    found = tiles_on_device(datas, scorer.spec, scorer.tiling, torch.device("cpu"))
    assert [f is None for f in found] == [False] * 5 + [True] * 3
    device_tiles = [f[2].numpy() for f in found[:5]]
    for data, (width, height, tiles, boxes) in zip(datas[:5], found[:5]):
        w, h, cpu_tiles, cpu_boxes = decode_tiles(data, scorer.spec, scorer.tiling.size, scorer.tiling.overlap)
        assert (width, height) == (w, h) and np.array_equal(boxes, cpu_boxes)
        difference = np.abs(tiles.numpy().astype(np.int16) - cpu_tiles.astype(np.int16))
        assert difference.mean() < 3.0, difference.mean()  # JPEG draft decoding and resampling kernels differ
    assert len(device_tiles[4]) > 1  # the photo was tiled
    on_device, _ = scorer.score(device_tiles)
    on_cpu, _ = scorer.score([decode_tiles(d, scorer.spec, scorer.tiling.size, scorer.tiling.overlap)[2]
                              for d in datas[:5]])
    np.testing.assert_allclose(on_device, on_cpu, atol=0.02)


def test_gpu_actors_decoding_packs_of_bytes_score_like_the_cpu_tasks(random_model, labelled_tree, tmp_path):
    """The GPU pipeline's two halves (read_encoded in CPU tasks, CrackPredictor decoding on its device), run
    here on the CPU device: the same rows, errors and probabilities as read_and_tile + CrackPredictor."""
    from cracknet.model.card import preprocessing_of, read_card
    from cracknet.score.pipeline import CrackPredictor, read_and_tile, read_encoded

    files = sorted((labelled_tree / "crack").glob("*"))[:5]
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    Image.open(files[0]).convert("RGB").save(tmp_path / "a.png")
    (tmp_path / "drone.jpg").write_bytes(jpeg(DRONE_GPS, DRONE_DETAILS, DRONE_BASE, dji_xmp(GimbalPitchDegree="-90"),
                                              image=Image.open(files[1]).convert("RGB")))
    files[1] = tmp_path / "drone.jpg"
    uris = [str(f) for f in files] + [str(tmp_path / "broken.jpg"), str(tmp_path / "a.png"),
                                      str(tmp_path / "gone.jpg")]
    batch = {"image_uri": np.asarray(uris, dtype=object), "version": np.asarray([""] * len(uris), dtype=object)}
    card = read_card(str(random_model))
    tiling = Tiling(96)
    on_device = CrackPredictor(str(random_model), card["model_id"], 16, tiling, decode_on_device=True)
    on_cpu = CrackPredictor(str(random_model), card["model_id"], 16, tiling)
    got = [on_device(p) for p in read_encoded(batch, "/", images_per_pack=3, max_bytes=1 << 30)]
    want = [on_cpu(p) for p in read_and_tile(batch, preprocessing_of(card), tiling, "/", tiles_per_pack=16)]
    column = lambda parts, key: [v for p in parts for v in p[key]]  # noqa: E731
    assert column(got, "image_uri") == column(want, "image_uri") == uris
    errors = column(got, "error")
    assert errors[:5] == [""] * 5 and errors[6] == "" and "not a recognised image" in errors[5] and "does not exist" in errors[7]
    assert errors == column(want, "error")
    assert column(got, "tiles_scored") == column(want, "tiles_scored")
    np.testing.assert_allclose(column(got, "crack_probability"), column(want, "crack_probability"), atol=0.02)
    # Where each photo was taken travels with it on both paths: read from the header where the bytes are read.
    assert column(got, "photo") == column(want, "photo")
    drone = json.loads(column(got, "photo")[1])
    assert drone["camera"] == "DJI FC6310" and drone["latitude"] == pytest.approx(47.370094, abs=1e-6)
    assert json.loads(column(got, "photo")[0])["latitude"] is None and column(got, "photo")[7] == ""  # gone
