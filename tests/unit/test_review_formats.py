"""The review's file formats: Label Studio's brush RLE and COCO's RLE, round trips and, for COCO, an independent
reader (pycocotools). Label Studio's own encoder and decoder are checked against ours in the integration test,
where its venv is."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cracknet.errors import CracknetError
from cracknet.review import coco, labelstudio


def crack_mask(height: int = 90, width: int = 130, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), dtype=bool)
    mask[40:43, 5:120] = True
    mask[rng.integers(0, height, 40), rng.integers(0, width, 40)] = True
    mask[0, 0] = True  # a crack pixel first: COCO's counts then start with an empty background run
    return mask


def test_brush_rle_round_trips_and_refuses_a_mask_of_another_size():
    mask = crack_mask()
    rle = labelstudio.encode_rle(mask)
    assert np.array_equal(labelstudio.decode_rle(rle, 130, 90), mask)
    empty = np.zeros((7, 5), dtype=bool)
    assert not labelstudio.decode_rle(labelstudio.encode_rle(empty), 5, 7).any()
    big = np.ones((300, 300), dtype=bool)  # a run longer than 2^16 values
    assert labelstudio.decode_rle(labelstudio.encode_rle(big), 300, 300).all()
    with pytest.raises(CracknetError, match="not the 46800 of a 130 x 90"):
        labelstudio.decode_rle(labelstudio.encode_rle(np.zeros((91, 130), bool)), 130, 90)
    with pytest.raises(CracknetError, match="ends early"):
        labelstudio.decode_rle(rle[: len(rle) // 2], 130, 90)


def test_coco_masks_read_back_with_pycocotools():
    from pycocotools.coco import COCO

    mask = crack_mask()
    item = {"image_uri": "s3://survey/a.jpg", "width": 130, "height": 90, "crack_probability": 0.8, "is_crack": True,
            "structure": "s3://survey", "reason": "random", "inclusion_probability": 0.5, "model_id": "m"}
    data = coco.dataset([(item, mask), ({**item, "image_uri": "s3://survey/b.jpg"}, None)], "test")
    reader = COCO()
    reader.dataset = json.loads(json.dumps(data))
    reader.createIndex()
    (annotation,) = reader.loadAnns(reader.getAnnIds())
    assert np.array_equal(reader.annToMask(annotation).astype(bool), mask)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    assert annotation["bbox"] == [0, 0, int(cols[-1]) + 1, int(rows[-1]) + 1] and annotation["area"] == mask.sum()
    assert [i["file_name"] for i in reader.loadImgs(reader.getImgIds())] == ["s3://survey/a.jpg", "s3://survey/b.jpg"]


@pytest.mark.parametrize("export, message", [
    (b"{not json", "not Label Studio's JSON export"),
    (b'{"tasks": []}', "a list of tasks"),
    (b'[{"id": 3, "data": {"image": "x.jpg"}}]', "names no image_uri"),
    (json.dumps([{"id": 1, "data": {"image_uri": "a.jpg"}, "annotations": [{"result": [
        {"from_name": "verdict", "value": {"choices": ["Crack!"]}}]}]}]).encode(), "not 'crack' or 'no crack'"),
    (json.dumps([{"id": 1, "data": {"image_uri": "a.jpg"}, "annotations": [{"result": [
        {"from_name": "mask", "value": {"format": "rle", "rle": [0], "brushlabels": ["crack"]}}]}]}]).encode(),
     "does not say its image's size"),
])
def test_labels_that_are_not_an_export_of_cracknets_project_are_one_sentence(export, message):
    with pytest.raises(CracknetError, match=message):
        labelstudio.read_export(export)


def test_cancelled_annotations_are_left_out_and_annotators_named():
    export = [{"id": 1, "data": {"image_uri": "a.jpg"}, "annotations": [
        {"completed_by": 4, "result": [{"from_name": "verdict", "value": {"choices": ["crack"]}}]},
        {"completed_by": {"id": 5, "email": "ana@example.com"}, "was_cancelled": True, "result": []}]}]
    (task,) = labelstudio.read_export(json.dumps(export).encode())
    assert [(a["annotator"], a["verdict"], a["mask"]) for a in task["annotations"]] == [("user 4", True, None)]


def test_tree_folders_are_named_by_the_structure_and_never_shared():
    from cracknet.review.verdicts import folder_names

    names = folder_names({"s3://a/bridge-7", "s3://b/bridge-7", "/surveys/tunnel east/"})
    assert names["/surveys/tunnel east/"] == "tunnel_east"
    assert names["s3://a/bridge-7"] != names["s3://b/bridge-7"] and names["s3://a/bridge-7"].startswith("bridge-7-")
    assert folder_names({"/x/deck"}) == {"/x/deck": "deck"}
