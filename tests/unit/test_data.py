"""Discovery of labelled trees and the content-hash split (no Ray needed)."""

import hashlib
import random

import pytest

from cracknet import storage
from cracknet.data.splits import (assign_groups, check_grouping, grouper, looks_tiled, plan_splits, resolve_grouping,
                                  split_of, ungrouped_tiles)
from cracknet.data.trees import LabelledImage, discover, label_of
from cracknet.errors import CracknetError
from cracknet.train.config import TrainConfig


def touch(root, rel, data=b"x"):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_discover_accepts_label_aliases_nesting_and_any_extension_case(tmp_path):
    touch(tmp_path, "Positive/bridge-a/img1.JPG")
    touch(tmp_path, "positive/img2.jpeg")
    touch(tmp_path, "Negative/deep/er/img3.Png")
    touch(tmp_path, "no_crack/img4.TIF")
    touch(tmp_path, "crack/notes.txt")  # not an image: ignored
    touch(tmp_path, "README.md")
    found = {(p.uri.removeprefix(str(tmp_path) + "/"), p.label) for p in discover(str(tmp_path))}
    assert found == {("Positive/bridge-a/img1.JPG", 1), ("positive/img2.jpeg", 1),
                     ("Negative/deep/er/img3.Png", 0), ("no_crack/img4.TIF", 0)}


@pytest.mark.parametrize("layout, message", [
    ([], "No images"),
    (["crack/a.jpg", "crack/b.jpg"], "only crack images"),
    (["crack/a.jpg", "no_crack/b.jpg", "maybe/c.jpg"], "'maybe' (1 images)"),
    (["crack/a.jpg", "no_crack/b.jpg", "loose.jpg"], "(no folder)"),
])
def test_discover_refuses_trees_it_cannot_train_on(tmp_path, layout, message):
    tmp_path.joinpath("empty-marker.txt").write_text("")
    for rel in layout:
        touch(tmp_path, rel)
    with pytest.raises(CracknetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        discover(str(tmp_path))


def test_discover_missing_root(tmp_path):
    with pytest.raises(CracknetError, match="does not exist"):
        discover(str(tmp_path / "nope"))


def test_label_of_uses_the_top_folder_only():
    assert label_of("/d", "/d/crack/no_crack/x.jpg") == 1
    assert label_of("bucket/p", "bucket/p/Negative/x.jpg") == 0
    assert label_of("/d", "/d/x.jpg") is None


def fake_hash(i):
    return hashlib.sha256(str(i).encode()).hexdigest()


def test_split_of_is_a_function_of_content_only():
    h = fake_hash(7)
    assert split_of(h, 0.15, 0.15) == split_of(h, 0.15, 0.15)
    assert split_of("0" * 64, 0.15, 0.15) == "test"
    assert split_of("f" * 64, 0.15, 0.15) == "train"


def rows(n_per_class):
    out = []
    for label in (0, 1):
        for i in range(n_per_class):
            out.append({"path": f"/d/{label}/{i}.jpg", "label": label, "sha256": fake_hash((label, i)), "error": ""})
    return out


def test_plan_is_stratified_in_expectation_and_order_independent():
    data = rows(2000)
    plan = plan_splits(data, 0.15, 0.15)
    for split, share in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        for name in ("crack", "no_crack"):
            assert abs(plan.counts[split][name] / 2000 - share) < 0.03, (split, name, plan.counts)
    shuffled = list(data)
    random.Random(3).shuffle(shuffled)
    again = plan_splits(shuffled, 0.15, 0.15)
    assert again.fingerprint == plan.fingerprint and again.members == plan.members


def test_duplicates_never_straddle_splits_and_conflicts_are_dropped():
    data = rows(300)
    # Two exact copies of an image under other names, and one image filed under both labels.
    data.append({**data[5], "path": "/d/0/copy-a.jpg"})
    data.append({**data[5], "path": "/d/0/copy-b.jpg"})
    data.append({**data[400], "path": "/d/0/mislabelled.jpg", "label": 0})
    plan = plan_splits(data, 0.15, 0.15)
    assert plan.duplicates == 2 and plan.conflicts == 2
    kept = [uri for members in plan.members.values() for uri in members]
    assert len(kept) == len(set(kept)) == 600 - 1
    assert sum(p in kept for p in ("/d/0/5.jpg", "/d/0/copy-a.jpg", "/d/0/copy-b.jpg")) == 1
    assert data[400]["path"] not in kept


def test_unreadable_images_are_counted_and_fatal_only_above_the_limit():
    data = rows(100)
    for row in data[:2]:
        row["error"] = "the file is empty"
    plan = plan_splits(data, 0.15, 0.15, max_bad_fraction=0.02)
    assert len(plan.unreadable) == 2 and plan.total == 198
    with pytest.raises(CracknetError, match="2 of 200 images could not be decoded"):
        plan_splits(data, 0.15, 0.15, max_bad_fraction=0.005)


def test_too_small_a_data_set_is_refused_with_a_sentence():
    with pytest.raises(CracknetError, match="split holds no"):
        plan_splits(rows(2), 0.15, 0.15)


# ---------------------------------------------------------------------------------------------------
# Grouped splits: the tiles of one photo stay together


def tiled_rows(root, photos=40, tiles=12, nested=True, seed=0):
    """Rows as the decoder yields them for ``photos`` photos cut into ``tiles`` tiles each, some cracked."""
    rng = random.Random(seed)
    out = []
    for p in range(photos):
        for t in range(tiles):
            label = int(rng.random() < 0.4)
            folder = "crack" if label else "no_crack"
            name = f"{folder}/road{p:03d}/road{p:03d}_x{t % 4}_y{t // 4}.jpg" if nested else \
                f"{folder}/road{p:03d}_x{t % 4}_y{t // 4}.jpg"
            out.append({"path": f"{root}/{name}", "label": label, "sha256": fake_hash(p * 1000 + t), "error": ""})
    return out


@pytest.mark.parametrize("by, nested", [("folder", True), (r"(.*)_x\d+_y\d+", False), ("folder:1", True)])
def test_grouped_splits_never_put_one_photo_in_two_splits(by, nested):
    root = "/data/roads"
    data = tiled_rows(root, nested=nested)
    plan = plan_splits(data, 0.15, 0.15, group_of=grouper(by, root), grouping=by)
    photo = lambda uri: uri.rsplit("/", 1)[-1].split("_x")[0]  # noqa: E731
    where = {}
    for split, members in plan.members.items():
        for uri in members:
            assert where.setdefault(photo(uri), split) == split  # under both labels
    assert len(where) == 40 and plan.group_counts() == {s: len({photo(u) for u in m}) for s, m in plan.members.items()}
    # Whole photos still give each split about its share of the images.
    total = sum(len(m) for m in plan.members.values())
    assert abs(len(plan.members["test"]) / total - 0.15) < 0.05 and abs(len(plan.members["val"]) / total - 0.15) < 0.05
    summary = plan.summary()["grouping"]
    assert summary["by"] == by and summary["groups"]["test"] == len(summary["test_groups"]) >= 4
    # By image, the same tiles straddle: most photos have tiles in two or more splits.
    by_image = plan_splits(data, 0.15, 0.15)
    spread = {}
    for split, members in by_image.members.items():
        for uri in members:
            spread.setdefault(photo(uri), set()).add(split)
    assert sum(len(s) > 1 for s in spread.values()) > 20 and by_image.summary()["grouping"] == {"by": "none"}


def test_auto_grouping_follows_the_tree_and_tiled_names_are_noticed(tmp_path):
    nested, flat = tmp_path / "nested", tmp_path / "flat"
    for p in range(3):
        for t in range(4):
            touch(nested, f"crack/photo{p}/photo{p}_x{t}_y0.jpg")
            touch(flat, f"no_crack/photo{p}_x{t}_y0.jpg")
    touch(flat, "crack/other.jpg")
    assert resolve_grouping("auto", str(nested), discover(str(nested), require_both_classes=False)) == "folder"
    flat_images = discover(str(flat))
    assert resolve_grouping("auto", str(flat), flat_images) == "none"
    assert resolve_grouping("(.*)_x", str(flat), flat_images) == "(.*)_x"
    photos, example = looks_tiled(str(flat), flat_images)
    assert photos == 3 and example.startswith("photo")
    assert ungrouped_tiles(str(flat), flat_images).startswith("the image names look like tiles of about 3 photos")
    metu_like = [LabelledImage(f"/d/crack/{i:05d}.jpg", 1) for i in range(50)]
    assert looks_tiled("/d", metu_like) is None


def test_a_grouping_that_does_not_fit_is_refused_in_one_sentence():
    with pytest.raises(CracknetError, match="is not auto, none, photo, folder, folder:N or a regular expression"):
        check_grouping("(unclosed")
    group_of = grouper(r"(.*)_x\d+", "/d")
    assert group_of("/d/crack/a/b_x1.jpg") == "a/b"
    with pytest.raises(CracknetError, match="does not match --group-by"):
        group_of("/d/crack/DSC0001.jpg")
    with pytest.raises(CracknetError, match=r"group-by"):
        TrainConfig(data="d", output="o", group_by="[")


def test_assign_groups_is_deterministic_and_fills_each_share():
    sizes = {f"photo{i}": 5 + i % 7 for i in range(60)}
    first = assign_groups(sizes, 0.15, 0.15)
    assert first == assign_groups(dict(reversed(list(sizes.items()))), 0.15, 0.15)
    total = sum(sizes.values())
    for split in ("val", "test"):
        share = sum(n for k, n in sizes.items() if first[k] == split) / total
        assert abs(share - 0.15) < 0.03


def test_generated_pavement_photos_are_tiles_in_photo_folders_labelled_by_their_exact_masks(tmp_path):
    import numpy as np

    from cracknet.demo.synthetic import generate_photos, pavement_photo, tile_label

    written = generate_photos(str(tmp_path / "pave"), photos=6, tile=48, seed=1)
    again = generate_photos(str(tmp_path / "again"), photos=6, tile=48, seed=1)
    assert [w.split("/pave/")[1] for w in written] == [w.split("/again/")[1] for w in again]
    assert all(storage.read_bytes(a) == storage.read_bytes(b) for a, b in zip(written, again))
    images = discover(str(tmp_path / "pave"))
    assert resolve_grouping("auto", str(tmp_path / "pave"), images) == "folder"
    assert len({grouper("folder", str(tmp_path / "pave"))(i.uri) for i in images}) == 6
    # A tile's label is its mask's: crack where a third of the side's worth of crack pixels fall in it.
    rng = np.random.default_rng(4)
    photo, mask = pavement_photo(rng, 192, 144)
    assert photo.size == (192, 144) and mask.shape == (144, 192) and mask.dtype == bool
    empty, crossed, grazed = np.zeros((48, 48), bool), np.zeros((48, 48), bool), np.zeros((48, 48), bool)
    crossed[20, :] = True
    grazed[0, :5] = True
    assert (tile_label(empty, 48), tile_label(crossed, 48), tile_label(grazed, 48)) == (0, 1, None)
