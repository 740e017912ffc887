"""Discovery of labelled trees and the content-hash split (no Ray needed)."""

import hashlib
import random

import pytest

from cracknet import storage
from cracknet.data import discover, label_of, plan_splits, split_of
from cracknet.errors import CracknetError


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


def test_discover_on_s3(s3_endpoint):
    root = "s3://cracknet-test/discover-tree"
    storage.write_bytes(f"{root}/crack/a b/1.jpg", b"1")
    storage.write_bytes(f"{root}/no_crack/2.jpg", b"2")
    found = sorted((p.uri, p.label) for p in discover(root))
    assert found == [(f"{root}/crack/a b/1.jpg", 1), (f"{root}/no_crack/2.jpg", 0)]


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
