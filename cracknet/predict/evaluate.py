"""Metrics of a trained model on any labelled tree.

    cracknet evaluate --model runs/demo --data ../shared/data/metu-dev --json runs/demo/eval.json
    cracknet evaluate --model runs/demo --data metu=../shared/data/metu-dev --data bridge-a=s3://labels/bridge-a

Images are read and scored through ``cracknet.predict.scorer``, exactly as the nightly
job scores them (large photos tiled; an image's probability is its highest
tile's), so these metrics describe what ``cracknet score`` will say.
Unreadable images are skipped and listed, never fatal. Several labelled trees
("surfaces") give one row each, which the model card keeps under ``evaluations``.
On a mask tree, a model that draws masks is also measured pixel by pixel at the
photos' own size, with the masks drawn as the nightly job draws them (decoded on
the tiles at or above its threshold): precision, recall and F1 within 2 px, IoU,
and the best fixed threshold's F1 (ODS).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator, Optional

import numpy as np

from cracknet.config import REQUIRED, option
from cracknet.data.splits import check_grouping, grouper, resolve_grouping
from cracknet.data.trees import LabelledImage, discover, has_masks
from cracknet.errors import CracknetError
from cracknet.images.decoding import check_tile_size
from cracknet.measure.intervals import evaluation
from cracknet.measure.metrics import MaskTally, binary_metrics
from cracknet.measure.thresholds import CONFIDENCE, MAX_FALSE_ALARMS, RECALL, check_recall_settings, operating_point
from cracknet.model.card import in_split
from cracknet.numbers import Range, check_fields
from cracknet.predict.scorer import Found, Scorer, read_image

READ_THREADS = 8


def read_tree(images: list[LabelledImage], scorer: Scorer, want=None) -> Iterator[list[tuple[int, Found]]]:
    """The images read and tiled in a thread pool, in groups of about ``scorer.batch_tiles`` tiles (so large
    photos are held a few at a time); each with its position in ``images``."""
    with ThreadPoolExecutor(READ_THREADS) as pool:
        group, tiles = [], 0
        for start in range(0, len(images), READ_THREADS):
            chunk = images[start:start + READ_THREADS]
            for offset, found in enumerate(pool.map(
                    lambda image: read_image(image.uri, scorer.spec, scorer.tiling, want=want), chunk)):
                group.append((start + offset, found))
                tiles += 0 if found.tiles is None else len(found.tiles)
            if tiles >= scorer.batch_tiles:
                yield group
                group, tiles = [], 0
        if group:
            yield group


@dataclass
class Predictions:
    """One model's crack probabilities for the readable images of a labelled tree."""

    uris: list[str]
    probs: np.ndarray
    labels: np.ndarray
    unreadable: list[tuple[str, str]]
    source: str = ""
    root: str = ""  # the labelled tree
    masks: dict | None = None  # pixel metrics of the masks drawn, on a mask tree with a model that draws them


def predict_tree(scorer: Scorer, data_uri: str, split: str = "all") -> Predictions:
    """Score a labelled tree the way the nightly job scores (large photos tiled, image = highest tile);
    ``split`` keeps only the images the model's training run put in that split."""
    from cracknet.predict.stitching import photo_probabilities

    images = discover(data_uri, require_both_classes=False)  # e.g. a folder of known cracks
    want = None if split == "all" else in_split(scorer.card, split, data_uri)
    tally = MaskTally(scorer.card["mask"]["threshold"]) if scorer.draws_masks and has_masks(images) else None
    uris, probs, labels, unreadable = [], [], [], []
    for group in read_tree(images, scorer, want):
        readable, truths = [], []
        for i, found in group:
            usable = not found.error and not found.skipped
            truth = _true_mask(images[i], found, scorer.spec.max_pixels) if usable else None
            if found.error:
                unreadable.append((found.uri, found.error))
            elif not found.skipped:
                readable.append((i, found))
                truths.append(truth)
        tiles = [found.tiles for _, found in readable]
        # Masks as the nightly job draws them: decoded on the tiles at or above the model's threshold.
        best, _, maps = scorer.score_masks(tiles, scorer.threshold) if tally else (*scorer.score(tiles), None)
        for n, ((i, found), truth) in enumerate(zip(readable, truths)):
            if tally is not None and truth is not None:
                tally.add(photo_probabilities(maps[n], found.boxes, found.width, found.height), truth)
        uris += [images[i].uri for i, _ in readable]
        labels += [images[i].label if truth is None else int(truth.any()) for (i, _), truth in zip(readable, truths)]
        probs.append(best)
    source = data_uri if split == "all" else f"{data_uri} ({split} split)"
    if not uris:
        if len(unreadable) == len(images):
            uri, error = unreadable[0]
            raise CracknetError(f"None of the {len(images)} images under {data_uri} could be read "
                                f"(the first: {uri}: {error}).")
        raise CracknetError(f"None of the {len(images)} images under {data_uri} is in the {split} split of the "
                            f"model's training run; use --split all for other data.")
    return Predictions(uris, np.concatenate(probs), np.asarray(labels, dtype=np.int64), unreadable, source, data_uri,
                       tally.result() if tally else None)


def _true_mask(image: LabelledImage, found: Found, max_pixels: int) -> np.ndarray | None:
    """The true mask of a masked image (None for a labelled one); a mask that cannot be used makes the image
    unreadable, with the reason (``found.error``), as in training."""
    if not image.mask:
        return None
    from cracknet.data.loading import load_mask
    from cracknet.images.decoding import ImageError

    try:
        return load_mask(image.mask, (found.width, found.height), max_pixels)
    except ImageError as exc:
        found.error = str(exc)
        return None


def groups_of(found: Predictions, group_by: str = "auto") -> tuple[str, list[str] | None]:
    """(the grouping, each scored image's group in ``found.uris`` order); None where the tree has no groups
    (``splits.resolve_grouping``)."""
    by = resolve_grouping(group_by, found.root, [LabelledImage(uri, 0) for uri in found.uris])
    group_of = grouper(by, found.root)
    return by, None if group_of is None else [group_of(uri) for uri in found.uris]


def group_rows(found: Predictions, groups: list[str] | None, threshold: float) -> list[dict]:
    """One row per group: images, cracks, found, missed, false alarms, accuracy at ``threshold``, the groups with
    the most errors first; none without groups."""
    if groups is None:
        return []
    rows: dict[str, dict] = {}
    for group, prob, label in zip(groups, found.probs, found.labels):
        row = rows.setdefault(group, {"images": 0, "cracks": 0, "found": 0, "false_alarms": 0})
        flagged = bool(prob >= threshold)
        row["images"] += 1
        row["cracks"] += int(label)
        row["found"] += int(flagged and label)
        row["false_alarms"] += int(flagged and not label)
    table = [{"group": name, **r, "missed": r["cracks"] - r["found"],
              "accuracy": 1.0 - (r["cracks"] - r["found"] + r["false_alarms"]) / r["images"]}
             for name, r in rows.items()]
    return sorted(table, key=lambda r: (r["accuracy"], r["group"]))


def evaluate(model_uri: str, data_uri: str, batch_size: int = 0, target_recall: float | None = None,
             recall_confidence: float = 0.95, tile_size: int = 0, scorer: Scorer | None = None,
             max_false_alarms: float = MAX_FALSE_ALARMS, group_by: str = "auto") -> dict:
    """Metrics of a model on a labelled tree at its own threshold and at 0.5, with bootstrap intervals (over whole
    groups, photos or structures, where the tree has them: ``group_by``).

    With ``target_recall``, also the threshold this data would choose for that recall (by the same rule
    as training, see ``thresholds.operating_point``), and its precision.
    """
    scorer = scorer or Scorer.load(model_uri, batch_tiles=batch_size, tile_size=tile_size)
    card = scorer.card
    found = predict_tree(scorer, data_uri)
    probs, labels, unreadable = found.probs, found.labels, found.unreadable
    grouping, groups = groups_of(found, group_by)
    report = {
        "model": card["folder"],
        "model_id": card["model_id"],
        "data": data_uri,
        "images": len(found.uris) + len(unreadable),
        "threshold": card["threshold"],
        "metrics": evaluation(probs, labels, card["threshold"], groups=groups),
        "metrics_at_0.5": binary_metrics(probs, labels, 0.5),
        "unreadable": [{"uri": uri, "error": err} for uri, err in unreadable],
        **({"masks": found.masks} if found.masks else {}),
    }
    report["grouping"], report["groups"] = grouping, group_rows(found, groups, card["threshold"])
    if target_recall is not None:
        point = operating_point(probs, labels, target_recall, recall_confidence, max_false_alarms)
        report["for_target_recall"] = {**point, "metrics": binary_metrics(probs, labels, point["threshold"])}
    return report


@dataclass(frozen=True)
class EvaluateConfig:
    """``cracknet evaluate``: a model's metrics on one or more labelled trees."""
    model: str = option(REQUIRED, "the model/ folder, the training output above it, or models:/...")
    data: tuple[str, ...] = option(REQUIRED, "labelled tree (local path or s3://bucket/prefix), optionally named "
                                   "for its surface; repeat for several surfaces, one row each", metavar="[NAME=]URI")
    record: bool = option(False, "keep each surface's row in the model card (evaluations), shown by cracknet report")
    json: Optional[str] = option(None, "also write the metrics as JSON here (path or s3://)")
    batch_size: int = option(0, "tiles per model call (default: 64, or 8 in float32 on a CPU)",
                             range=Range(0, 4096))
    tile_size: int = option(0, "tile side in source pixels for large images, as for score (default: the model's "
                               "training images)")
    target_recall: Optional[float] = option(None, "also report the threshold that keeps this recall on this data, "
                                                  "and its precision", range=RECALL)
    recall_confidence: float = option(0.95, "confidence the --target-recall threshold keeps that recall on new "
                                            "images", range=CONFIDENCE)
    group_by: str = option("auto", "per-group rows (photos, structures): auto (photo folders where the tree has "
                                   "<label>/<photo>/<tile>), none, folder, folder:N or a regular expression on the "
                                   "file name, as for train")
    max_false_alarms: float = option(MAX_FALSE_ALARMS, "the --target-recall threshold flags at most this share of "
                                                       "no-crack images", range=RECALL)

    def __post_init__(self):
        check_fields(self)
        check_recall_settings(self.target_recall, self.recall_confidence, self.max_false_alarms)
        check_tile_size(self.tile_size)
        check_grouping(self.group_by)
        for text in self.data:
            parse_surface(text)


def parse_surface(text: str) -> tuple[str, str]:
    """``name=URI`` or a bare URI (named by its last path component)."""
    name, sep, uri = text.partition("=")
    if not sep or not name or "/" in name or ":" in name:
        name, uri = text.rstrip("/").rsplit("/", 1)[-1] or text, text
    if not uri:
        raise CracknetError(f"--data {text!r} names no labelled tree; use NAME=URI or a URI.")
    return name, uri


def evaluate_surfaces(model_uri: str, surfaces: list[tuple[str, str]], batch_size: int = 0,
                      target_recall: float | None = None, recall_confidence: float = 0.95,
                      tile_size: int = 0, max_false_alarms: float = MAX_FALSE_ALARMS,
                      group_by: str = "auto") -> dict[str, dict]:
    """``evaluate`` on each named labelled tree with one loaded model; reports by surface name."""
    names = [name for name, _ in surfaces]
    if len(set(names)) != len(names):
        raise CracknetError(f"Each --data needs its own name; got {', '.join(names)}. Use NAME=URI.")
    scorer = Scorer.load(model_uri, batch_tiles=batch_size, tile_size=tile_size)
    return {name: evaluate(model_uri, uri, target_recall=target_recall, recall_confidence=recall_confidence,
                           scorer=scorer, max_false_alarms=max_false_alarms, group_by=group_by)
            for name, uri in surfaces}


def surface_row(report: dict) -> dict:
    """What the model card keeps of one surface's evaluation."""
    m = report["metrics"]
    return {"data": report["data"], "images": m["n"], "cracks": m["tp"] + m["fn"],
            **({"groups": len(report["groups"]), "grouping": report["grouping"]} if report.get("groups") else {}),
            "unreadable": len(report["unreadable"]), "threshold": report["threshold"],
            **{k: m[k] for k in ("accuracy", "precision", "recall", "f1", "roc_auc")},
            "recall_interval_95": m["intervals_95"].get("recall"), "interval_unit": m.get("interval_unit", "image"),
            **({"masks": {k: report["masks"][k] for k in ("images", "precision", "recall", "f1", "iou", "ods_f1",
                                                          "ods_threshold", "threshold", "tolerance_px")}}
               if report.get("masks") else {}),
            "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
