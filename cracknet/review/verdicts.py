"""Reviewers' verdicts, one per photo: agreed across annotators (a disagreement is reported, never resolved by
a guess), written as labelled trees, and compared with the masks the model drew.

The tree ``review import`` writes is a mixed tree (``cracknet.data.trees``): a photo whose reviewer drew or kept
a crack mask goes to ``images/`` with its mask in ``masks/``; a photo judged not cracked goes there too, with an
all-background mask (an exact label for the decoder); a photo judged cracked with no mask goes to ``crack/``.
Photos keep their file names under a folder per structure (named by its last name: ``folder_names``), so a
photo is one example, and ``--group-by folder`` keeps a structure's photos in one split.
"""

from __future__ import annotations

import hashlib
import posixpath
import re

import numpy as np
import pyarrow as pa

from cracknet import storage


def agreed(tasks: list[dict], picks: list[dict]) -> dict:
    """One label per reviewed photo of the selection: {"labels": {uri: {verdict, mask, annotators, updated_at}},
    "conflicts": [{image_uri, verdicts}], "unknown": [uris not selected], "annotators": [names]}. Where annotators
    agree on the verdict and drew masks, the mask of the latest annotation is kept."""
    selected = {p["image_uri"] for p in picks}
    labels, conflicts, unknown, annotators = {}, [], [], set()
    for task in tasks:
        uri = task["image_uri"]
        if uri not in selected:
            unknown.append(uri)
            continue
        answers = [a for a in task["annotations"] if a["verdict"] is not None]
        annotators |= {a["annotator"] for a in answers if a["annotator"]}
        if not answers:
            continue
        if len({a["verdict"] for a in answers}) > 1:
            conflicts.append({"image_uri": uri, "verdicts": {str(a["annotator"]): a["verdict"] for a in answers}})
            continue
        latest = max(answers, key=lambda a: str(a["updated_at"] or a["created_at"] or ""))
        masks = [a for a in answers if a["mask"] is not None]
        drawn = max(masks, key=lambda a: str(a["updated_at"] or a["created_at"] or ""))["mask"] if masks else None
        labels[uri] = {"verdict": latest["verdict"], "mask": drawn if latest["verdict"] else None,
                       "annotators": sorted(str(a["annotator"]) for a in answers),
                       "updated_at": latest["updated_at"] or latest["created_at"]}
    return {"labels": labels, "conflicts": conflicts, "unknown": sorted(set(unknown)), "annotators": sorted(annotators)}


def folder_names(structures: set[str]) -> dict[str, str]:
    """A folder name per structure: its last name, made safe; where two structures share one, each gets a short
    hash of its whole name too, so that no two share a folder (and the same structures always get the same
    names, wherever they are stored)."""
    last = {s: re.sub(r"[^A-Za-z0-9._-]+", "_", s.rstrip("/").rsplit("/", 1)[-1])[:60] or "structure"
            for s in structures}
    shared = {name for name in last.values() if list(last.values()).count(name) > 1}
    return {s: f"{name}-{hashlib.sha256(s.encode()).hexdigest()[:6]}" if name in shared else name
            for s, name in last.items()}


def write_trees(labels: dict, picks: list[dict], output: str) -> dict:
    """Copy each labelled photo into the tree at ``output`` (masks as 8-bit PNGs); returns counts."""
    from cracknet.images.decoding import mask_png

    structure = {p["image_uri"]: p["structure"] for p in picks}
    folders = folder_names({structure[uri] for uri in labels})
    counts = {"masks": 0, "crack": 0}
    for uri, label in sorted(labels.items()):
        name = posixpath.join(folders[structure[uri]], uri.rstrip("/").rsplit("/", 1)[-1])
        data = storage.read_bytes(uri)
        if label["verdict"] and label["mask"] is None:
            storage.write_bytes(storage.join(output, "crack", name), data)
            counts["crack"] += 1
            continue
        from cracknet.images.decoding import load_rgb

        mask = label["mask"]
        if mask is None:  # judged not cracked: an exact all-background mask of the photo's size
            width, height = load_rgb(data).size
            mask = np.zeros((height, width), dtype=bool)
        storage.write_bytes(storage.join(output, "images", name), data)
        storage.write_bytes(storage.join(output, "masks", posixpath.splitext(name)[0] + ".png"), mask_png(mask))
        counts["masks"] += 1
    return counts


LABELS = pa.schema([("image_uri", pa.string()), ("truth", pa.bool_()), ("has_mask", pa.bool_()),
                    ("annotators", pa.list_(pa.string())), ("updated_at", pa.string()), ("reason", pa.string()),
                    ("inclusion_probability", pa.float64()), ("is_crack", pa.bool_())])


def labels_table(labels: dict, picks: list[dict]) -> pa.Table:
    rows = [{"image_uri": p["image_uri"], "truth": labels[p["image_uri"]]["verdict"],
             "has_mask": labels[p["image_uri"]]["mask"] is not None,
             "annotators": labels[p["image_uri"]]["annotators"], "updated_at": labels[p["image_uri"]]["updated_at"],
             "reason": p["reason"], "inclusion_probability": p["inclusion_probability"], "is_crack": p["is_crack"]}
            for p in picks if p["image_uri"] in labels]
    return pa.Table.from_pylist(rows, schema=LABELS)


def mask_agreement(labels: dict, picks: list[dict]) -> dict | None:
    """The model's masks against the reviewers' on reviewed photos where both are known, pixels within
    ``MASK_TOLERANCE`` counting, each photo weighted by 1 / its inclusion probability (so that the uncertain
    picks do not dominate): precision, recall and F1; None where no photo qualifies."""
    from cracknet.images.decoding import read_mask
    from cracknet.measure.metrics import MASK_TOLERANCE, pixel_counts

    totals, photos = np.zeros(4), 0
    for p in picks:
        label = labels.get(p["image_uri"])
        if label is None or (label["verdict"] and label["mask"] is None):
            continue  # unreviewed, or judged cracked with no mask drawn: nothing to compare
        drawn = read_mask(storage.read_bytes(p["mask_uri"])) if p["mask_uri"] else None
        truth = label["mask"] if label["mask"] is not None else np.zeros((p["height"], p["width"]), dtype=bool)
        if drawn is None:
            drawn = np.zeros_like(truth)
        if drawn.shape != truth.shape:
            continue
        totals += pixel_counts(drawn, truth) / p["inclusion_probability"]
        photos += 1
    if not photos:
        return None
    matched_p, predicted, matched_t, true = totals
    precision = matched_p / predicted if predicted else (1.0 if not true else 0.0)
    recall = matched_t / true if true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"photos": photos, "precision": precision, "recall": recall, "f1": f1, "tolerance_px": MASK_TOLERANCE}
