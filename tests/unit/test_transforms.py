"""The shared preprocessing: decoding odd real-world files, and the tensor presets."""

import io

import numpy as np
import pytest
import torch
from conftest import png_with_declared_size
from helpers import png16
from PIL import Image

from cracknet.demo.synthetic import concrete, draw_crack, image_bytes
from cracknet.images.augmentation import augment, train_preset
from cracknet.images.decoding import (IMAGENET_MEAN, IMAGENET_STD, ImageError, Preprocessing, decode, decode_tiles,
                                      eval_preset)

SPEC = Preprocessing(image_size=32)


def encode(img, fmt, **kw):
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def test_decodes_a_real_jpeg_to_the_model_scale(labelled_tree):
    data = next((labelled_tree / "crack").iterdir()).read_bytes()
    arr = decode(data, SPEC)
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8 and arr.std() > 1


def test_exif_orientation_is_applied():
    # Wide image: red left half, blue right half. EXIF 6 = "rotate 90 degrees clockwise to view",
    # which brings the left half to the top.
    arr = np.zeros((40, 80, 3), dtype=np.uint8)
    arr[:, :40] = (255, 0, 0)
    arr[:, 40:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode(encode(Image.fromarray(arr), "JPEG", exif=exif.tobytes(), quality=95), SPEC)
    top, bottom = out[:12].reshape(-1, 3).mean(0), out[-12:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


@pytest.mark.parametrize("make", [
    lambda: encode(Image.new("L", (50, 30), 128), "PNG"),
    lambda: encode(Image.new("RGBA", (30, 30), (10, 200, 30, 0)), "PNG"),
    lambda: encode(Image.new("P", (30, 30), 3), "GIF"),
    lambda: encode(Image.new("CMYK", (30, 30), (0, 255, 255, 0)), "JPEG"),
    lambda: encode(Image.new("RGB", (30, 30), (1, 2, 3)), "TIFF"),
])
def test_any_colour_mode_becomes_8_bit_rgb(make):
    out = decode(make(), SPEC)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_16_bit_greyscale_keeps_its_range():
    ramp = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (64, 1))
    out = decode(encode(Image.fromarray(ramp), "PNG"), SPEC)
    assert out[..., 0].min() < 10 and out[..., 0].max() > 245


def test_bad_files_raise_image_errors_with_reasons():
    good = image_bytes(concrete(np.random.default_rng(0), 64))
    cases = {
        b"": "empty",
        b"this is not an image at all": "not a recognised image",
        good[: len(good) // 2]: "unreadable",
        png_with_declared_size(100_000, 100_000): "exceeds the limit",
    }
    for data, reason in cases.items():
        with pytest.raises(ImageError, match=reason):
            decode(data, SPEC)


def test_eval_preset_normalises_with_the_recorded_statistics():
    images = torch.full((2, 8, 8, 3), 255, dtype=torch.uint8)
    x = eval_preset(images, SPEC)
    assert x.shape == (2, 3, 8, 8)
    expected = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert torch.allclose(x[0, :, 0, 0], torch.tensor(expected))


def cracked_patches(seed: int, count: int, size: int) -> torch.Tensor:
    """uint8 (N, S, S, 3) generated concrete patches, each with a crack."""
    rng = np.random.default_rng(seed)
    batch = []
    for _ in range(count):
        img = concrete(rng, size)
        draw_crack(img, rng)
        batch.append(np.asarray(img))
    return torch.from_numpy(np.stack(batch))


def test_augmentation_keeps_shape_range_and_is_seeded():
    images = cracked_patches(1, 6, 32)
    x = images.permute(0, 3, 1, 2).float() / 255
    a = augment(x.clone(), torch.Generator().manual_seed(5))
    b = augment(x.clone(), torch.Generator().manual_seed(5))
    c = augment(x.clone(), torch.Generator().manual_seed(6))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, x)
    # The crack survives: the darkest pixels stay far darker than the background.
    assert (a.mean(1).flatten(1).min(1).values < a.mean(1).flatten(1).median(1).values - 0.2).all()
    assert train_preset(images, SPEC, torch.Generator().manual_seed(0)).shape == (6, 3, 32, 32)


@pytest.mark.parametrize("width, height, tile, overlap", [(400, 300, 96, 0.25), (96, 500, 96, 0.0),
                                                         (1000, 1000, 227, 0.5), (50, 40, 96, 0.25)])
def test_tiles_cover_every_pixel_and_stay_inside(width, height, tile, overlap):
    from cracknet.images.decoding import tile_boxes

    covered = np.zeros((height, width), dtype=bool)
    for x, y, w, h in tile_boxes(width, height, tile, overlap):
        assert 0 <= x and 0 <= y and x + w <= width and y + h <= height
        covered[y:y + h, x:x + w] = True
    assert covered.all()


def test_large_images_are_tiled_at_native_scale_and_small_ones_kept_whole():
    from cracknet.images.decoding import decode_tiles

    big = encode(Image.new("RGB", (500, 200), (120, 120, 120)), "JPEG")
    width, height, tiles, boxes = decode_tiles(big, SPEC, tile=100, overlap=0.0)
    assert (width, height) == (500, 200) and tiles.shape == (10, 32, 32, 3) and len(boxes) == 10
    small = encode(Image.new("RGB", (120, 90), (120, 120, 120)), "JPEG")
    width, height, tiles, boxes = decode_tiles(small, SPEC, tile=100, overlap=0.0)
    assert tiles.shape == (1, 32, 32, 3) and boxes.tolist() == [[0, 0, 120, 90]]
    assert np.array_equal(tiles[0], decode(small, SPEC))  # whole images decode exactly as in training


def test_strong_augmentation_covers_camera_and_storage_effects_reproducibly():
    x = cracked_patches(2, 64, 48).permute(0, 3, 1, 2).float() / 255
    a = augment(x.clone(), torch.Generator().manual_seed(5), strong=True)
    b = augment(x.clone(), torch.Generator().manual_seed(5), strong=True)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1 and torch.equal(a, b)
    standard = augment(x.clone(), torch.Generator().manual_seed(5))
    grey = (a.max(1).values - a.min(1).values).flatten(1).max(1).values < 1e-6
    assert 3 <= int(grey.sum()) <= 25  # about a fifth turned grey (some also re-coded, within a level or two)
    assert not ((standard.max(1).values - standard.min(1).values).flatten(1).max(1).values < 1e-6).any()


def test_deep_images_count_by_the_memory_they_need_to_decode():
    """The pixel limit is a memory limit: a 16-bit image needs more bytes per pixel than 8-bit RGB, so at a limit
    that lets a 6000x6000 RGB photo through, a 16-bit one of that size is refused from its header alone."""
    deep, limit = png16(6000), Preprocessing(image_size=32, max_pixels=40_000_000)
    assert len(deep) < 200_000
    with pytest.raises(ImageError, match=r"6000x6000 pixels in mode I;16 would take \d+ MiB to decode, more than"):
        decode_tiles(deep, limit, 227, 0.25)
    rgb = io.BytesIO()
    Image.new("RGB", (6000, 6000)).save(rgb, format="JPEG")
    assert decode_tiles(rgb.getvalue(), limit, 2000, 0.25)[0] == 6000


