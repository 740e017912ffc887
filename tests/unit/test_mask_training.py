"""Training the crack-mask decoder: mask trees, mixed trees, masks through augmentation, and a real Ray Train run
that adapts a classifier into a model that also draws masks."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from cracknet.data.loading import decode_batch, select_split
from cracknet.data.trees import discover
from cracknet.demo import synthetic
from cracknet.errors import CracknetError
from cracknet.images.augmentation import augment
from cracknet.images.decoding import Preprocessing, mask_at, read_mask
from cracknet.model.network import build_model, in_backbone, load_model_state
from cracknet.train.worker import MASK_TRUTH_SHARE


def _png(array: np.ndarray, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _decode(root, images, size=32):
    paths = [image.uri for image in images]
    batch = {"path": paths, "bytes": [open(p, "rb").read() for p in paths]}
    return decode_batch(batch, Preprocessing(size), str(root), {i.uri: i.mask for i in images if i.mask})


def test_a_mixed_tree_pairs_masks_by_folder_and_stem(tmp_path):
    synthetic.generate_masked(str(tmp_path), photos=4, size=64)
    synthetic.generate(str(tmp_path), per_class=2, size=64)
    nested = tmp_path / "images" / "bridge-7"
    nested.mkdir()
    (nested / "a.jpg").write_bytes((tmp_path / "images" / "concrete-0000.jpg").read_bytes())
    (tmp_path / "masks" / "bridge-7").mkdir()
    (tmp_path / "masks" / "bridge-7" / "a.bmp").write_bytes((tmp_path / "masks" / "concrete-0000.png").read_bytes())
    images = discover(str(tmp_path))
    masked = {i.uri.split("/images/")[1]: i.mask.split("/masks/")[1] for i in images if i.mask}
    assert masked == {"bridge-7/a.jpg": "bridge-7/a.bmp", **{f"concrete-000{n}.jpg": f"concrete-000{n}.png"
                                                             for n in range(4)}}
    assert sorted(i.label for i in images if not i.mask) == [0, 0, 1, 1] and all(i.label is None for i in images
                                                                                 if i.mask)
    decoded = _decode(tmp_path, images)
    by_path = {p.split(str(tmp_path) + "/")[1]: i for i, p in enumerate(decoded["path"])}
    # Masked images are labelled by their masks; no_crack images are exact background; crack ones have no mask.
    truth = json.loads((tmp_path / "cracks.json").read_text())
    assert [decoded["label"][by_path[f"images/concrete-000{n}.jpg"]] for n in range(4)] == \
        [int(bool(truth[f"concrete-000{n}"])) for n in range(4)]
    assert all(decoded["has_mask"][i] == (not p.startswith("crack/")) for p, i in by_path.items())
    assert all(decoded["mask"][i].max() == 0 for p, i in by_path.items() if p.startswith("no_crack/"))
    rows = select_split(decoded, {decoded["path"][0]: 0})
    assert set(rows) == {"image", "label", "idx", "mask", "has_mask"} and len(rows["mask"]) == 1


def test_mask_trees_it_cannot_use_are_refused_in_a_sentence(tmp_path):
    synthetic.generate_masked(str(tmp_path), photos=3, size=48)
    (tmp_path / "masks" / "concrete-0001.png").unlink()
    with pytest.raises(CracknetError, match=r"1 of 3 images under .*/images have no mask .*concrete-0001\.jpg"):
        discover(str(tmp_path))
    (tmp_path / "masks" / "concrete-0001.jpg").write_bytes(b"x")
    (tmp_path / "masks" / "concrete-0001.png").write_bytes(b"x")
    with pytest.raises(CracknetError, match="are two masks for one image"):
        discover(str(tmp_path))


def test_a_damaged_or_misfitting_mask_is_an_unreadable_image_not_a_wrong_label(tmp_path):
    synthetic.generate_masked(str(tmp_path), photos=3, size=48)
    good = (tmp_path / "masks" / "concrete-0000.png").read_bytes()
    (tmp_path / "masks" / "concrete-0001.png").write_bytes(good[:len(good) // 2])
    (tmp_path / "masks" / "concrete-0002.png").write_bytes(_png(np.zeros((40, 48), np.uint8)))
    decoded = _decode(tmp_path, discover(str(tmp_path)))
    errors = dict(zip((p.rsplit("/", 1)[1] for p in decoded["path"]), decoded["error"]))
    assert errors["concrete-0000.jpg"] == ""
    assert errors["concrete-0001.jpg"].startswith("its mask ") and "cannot be used" in errors["concrete-0001.jpg"]
    assert "is 48x40 pixels and the image 48x48" in errors["concrete-0002.jpg"]


def test_mask_files_read_crack_wherever_a_pixel_is_not_black():
    truth = np.zeros((20, 30), bool)
    truth[5:8, 3:25] = True
    grey = truth.astype(np.uint8) * 255
    assert (read_mask(_png(grey)) == truth).all()
    assert (read_mask(_png(truth.astype(np.uint8), "L")) == truth).all()  # 0/1 masks, as many data sets store them
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0] = 200  # red everywhere, transparent off the crack
    rgba[..., 3] = grey
    assert (read_mask(_png(rgba, "RGBA")) == truth).all()
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="JPEG", quality=70)
    assert (read_mask(buffer.getvalue()) != truth).mean() < 0.02  # JPEG smear above black is not crack
    # A crack 2 source pixels wide stays in the model's 4x smaller view as pixels over a quarter crack, which the
    # validation truth counts as crack.
    thin = np.zeros((64, 64), bool)
    thin[:, 30:32] = True
    small = mask_at(thin, 16)
    assert small[:, 7].min() >= MASK_TRUTH_SHARE and small[:, :6].max() == 0


def test_masks_take_the_same_flips_turns_and_zoom_as_their_images():
    g = torch.Generator().manual_seed(3)
    masks = (torch.rand(6, 1, 32, 32, generator=g) > 0.9).float()
    x = masks.expand(-1, 3, -1, -1).clone() * 0.8 + 0.1
    for strong in (False, True):
        alone = augment(x.clone(), torch.Generator().manual_seed(7), strong)
        image, moved = augment(x.clone(), torch.Generator().manual_seed(7), strong, masks=masks)
        assert torch.equal(alone, image)  # the image's augmentation is unchanged by its mask
        if not strong:  # only lighting changed the grey image: it is its moved mask, brightened
            for a, b in zip(image, moved):
                assert np.corrcoef(a[0].flatten(), b[0].flatten())[0, 1] > 0.99


def test_a_segmenter_and_a_classifier_take_each_others_weights():
    classifier = build_model()
    segmenter = build_model(masks=True)
    load_model_state(segmenter, classifier.state_dict(), "a classifier")
    assert all(torch.equal(v, segmenter.state_dict()[f"classifier.{k}"]) for k, v in classifier.state_dict().items())
    plain = build_model()
    load_model_state(plain, segmenter.state_dict(), "a segmenter")
    assert all(torch.equal(v, classifier.state_dict()[k]) for k, v in plain.state_dict().items())
    heads = {name.split(".")[0] for name, _ in segmenter.named_parameters() if not in_backbone(name)}
    assert heads == {"classifier", "lateral", "smooth", "full", "head"}
    assert [n for n, _ in segmenter.named_parameters() if not in_backbone(n) and n.startswith("classifier.")] == \
        ["classifier.fc.weight", "classifier.fc.bias"]


def test_crops_of_a_photo_are_the_tiles_scoring_cuts_labelled_by_their_own_pixels(tmp_path):
    from cracknet.data.loading import UNLABELLED, crop_of
    from cracknet.images.decoding import decode_tiles

    synthetic.generate_road_masks(str(tmp_path), photos=2, width=150)
    images = discover(str(tmp_path))
    whole = _decode(tmp_path, images, size=32)  # without crops: one squashed row per photo
    assert len(whole["path"]) == 2
    decoded = decode_batch({"path": [i.uri for i in images], "bytes": [open(i.uri, "rb").read() for i in images]},
                           Preprocessing(32), str(tmp_path), {i.uri: i.mask for i in images}, crop=32)
    first = images[0].uri
    rows = [n for n, p in enumerate(decoded["path"]) if crop_of(p)[0] == first]
    _, _, tiles, boxes = decode_tiles(open(first, "rb").read(), Preprocessing(32), 32, 0.25)
    assert [crop_of(decoded["path"][n])[1] for n in rows] == [tuple(b) for b in boxes.tolist()]
    assert np.array_equal(decoded["image"][rows], tiles)  # the same pixels the nightly job scores
    mask = read_mask(open(images[0].mask, "rb").read())
    for n, (x, y, w, h) in zip(rows, boxes.tolist()):
        crack = int(mask[y:y + h, x:x + w].sum())
        assert decoded["label"][n] == (1 if crack >= 4 else 0 if crack == 0 else UNLABELLED)
        assert (decoded["mask"][n] > 0).sum() == crack  # at the photo's own scale a crack pixel is a mask pixel
    assert set(decoded["label"]) >= {0, 1} and decoded["has_mask"].all()
    assert len(set(decoded["sha256"])) == len(decoded["sha256"])  # each crop its own row in the split
    train = select_split(decoded, {p: n for n, p in enumerate(decoded["path"])}, labelled_only=True)
    assert UNLABELLED not in train["label"] and len(train["label"]) == (decoded["label"] != UNLABELLED).sum()


