"""What training writes into the card: the operating point, mask and width thresholds, intervals on test
photos, lineage from a base model."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Any

from cracknet.data.splits import NO_GROUPS
from cracknet.data.trees import CLASS_NAMES
from cracknet.images.decoding import Preprocessing
from cracknet.model.card import FORMAT_VERSION, MODEL_SIZE

NOT_RECORDED = ("overwrite", "ray_address", "verbose", "mlflow")  # settings that say nothing about the model (the


def build_card(cfg, spec: Preprocessing, plan, predictions: dict[str, Any], epochs_completed: int, kept_epoch: int,
               seconds: float, checkpoints: str, versions: dict[str, str]) -> dict[str, Any]:
    """The card of a trained model: classes, preprocessing, the threshold and how it was chosen, validation and
    test metrics, the data and its splits, the training settings and history, versions.

    ``cfg`` is the run's TrainConfig, ``plan`` its data.SplitPlan, ``predictions`` what the workers returned:
    validation and test (probabilities, labels), the epoch history and the restart count. The weights' hash and
    the model id are added when the artifact is saved (``network.save_artifact``).
    """
    from cracknet.measure.intervals import evaluation
    from cracknet.measure.metrics import binary_metrics, probability_histogram
    from cracknet.measure.thresholds import threshold_rule

    test_groups = split_groups(plan, "test")
    if test_groups is not None:
        test_groups = [g for g, label in zip(test_groups, predictions["test"][1]) if label >= 0]
    (val_probs, val_labels), (test_probs, test_labels) = (  # crops the head is not taught are not judged either
        (probs[labels >= 0], labels[labels >= 0]) for probs, labels in (predictions["val"], predictions["test"]))
    point = operating_point_of(cfg, val_probs, val_labels)
    threshold = point.pop("threshold")
    point.pop("recall")  # the same as val_recall below
    at_threshold = binary_metrics(val_probs, val_labels, threshold)
    at_half = binary_metrics(val_probs, val_labels, 0.5)
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_RECORDED}
    return {
        "format_version": FORMAT_VERSION,
        "class_names": list(CLASS_NAMES),
        "positive_class": CLASS_NAMES[1],
        "preprocessing": {**dataclasses.asdict(spec), "source_size": cfg.source_size or plan.typical_side,
                          "resize": "bilinear, whole image to a square" if "masks_at" not in predictions else
                          "bilinear; photos with masks in crops of source_size px (the tiles scoring cuts), other "
                          "images whole to a square",
                          "colour": "RGB, EXIF orientation applied"},
        "threshold": threshold,
        "threshold_rule": threshold_rule(cfg.target_recall, cfg.recall_confidence, cfg.max_false_alarms),
        "operating_point": {**point, "val_recall": at_threshold["recall"], "val_precision": at_threshold["precision"],
                            "val_recall_at_0.5": at_half["recall"], "val_precision_at_0.5": at_half["precision"]},
        "metrics": {
            "test": evaluation(test_probs, test_labels, threshold, seed=cfg.seed, groups=test_groups),
            "test_at_0.5": binary_metrics(test_probs, test_labels, 0.5),
            "val": at_threshold,
        },
        "data": {"uri": cfg.data, **plan.summary()},
        "training": {**settings, "epochs_completed": epochs_completed, "kept_epoch": kept_epoch,
                     "restarts": predictions["restarts"], "history": predictions["history"],
                     "seconds": round(seconds, 1), "checkpoints": checkpoints},
        "versions": versions,
        # What monitoring compares a first night with (cracknet.score.monitor): the validation images' probabilities.
        "monitoring": {"validation_probability_histogram": probability_histogram(val_probs)},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(mask_section(predictions["masks"], predictions.get("masks_at", MODEL_SIZE)) if "masks" in predictions
           else {}),
    }


def operating_point_of(cfg, val_probs, val_labels) -> dict:
    """The operating point (threshold and what backs it) a run's settings choose on its validation predictions."""
    from cracknet.measure.thresholds import operating_point

    return operating_point(val_probs, val_labels, cfg.target_recall, cfg.recall_confidence, cfg.max_false_alarms)


def split_groups(plan, split: str) -> list[str] | None:
    """The group (photo, structure) of each image of a split, in the order its predictions come (the split's row
    index); None where the run did not group its images."""
    if plan.grouping == NO_GROUPS:
        return None
    return [plan.groups[uri] for uri, _ in sorted(plan.members[split].items(), key=lambda item: item[1])]


def mask_section(pairs: dict[str, list], at: str = MODEL_SIZE) -> dict[str, Any]:
    """What the card says about the crack-mask decoder: its shape, and the mask threshold chosen on validation
    (the best fixed one, ODS) with the pixel metrics at it on validation and test; ``pairs`` are (probability map
    in [0, 1], true mask) per split, measured ``at`` the size they say."""
    from cracknet.measure.geometry import choose_width_threshold
    from cracknet.measure.metrics import mask_metrics
    from cracknet.model.masks import DECODER_CHANNELS, FULL_RESOLUTION_CHANNELS

    val = mask_metrics(pairs["val"])
    threshold = val["ods_threshold"] if val["crack_pixels"] else 0.5
    widths = choose_width_threshold(pairs["val"], threshold)
    return {
        "decoder": {"kind": "feature pyramid over the stem and layers 1-4, plus a full-resolution branch",
                    "channels": DECODER_CHANNELS, "full_resolution_channels": FULL_RESOLUTION_CHANNELS,
                    "output": "crack probability per input pixel"},
        "mask": {"threshold": threshold,
                 "threshold_rule": f"the best fixed threshold on the validation masks (ODS), at {at}"
                 if val["crack_pixels"] else "0.5: the validation split holds no crack pixels",
                 "measured_at": at,
                 # Widths come from a stricter cut where that reads the validation cracks' widths truer.
                 "width_threshold": widths["width_threshold"],
                 "width_rule": "the cut of the validation maps whose crack widths best match the true masks' "
                               f"(median error nearest 0, over {widths['cracks']} matched cracks)",
                 "width_validation": widths,
                 "val": mask_metrics(pairs["val"], threshold), "test": mask_metrics(pairs["test"], threshold)},
    }


def lineage(base: dict[str, Any], on_test: dict[str, Any]) -> dict[str, Any]:
    """Where an adapted model came from: the base model, what it was trained on (and its own lineage), and
    how it did on this run's test split before adaptation, at its own threshold."""
    return {"base_model": {"uri": base["folder"], "model_id": base["model_id"],
                           "data_uri": base.get("data", {}).get("uri"),
                           "data_fingerprint": base.get("data", {}).get("fingerprint"),
                           "threshold": base["threshold"], "image_size": base["preprocessing"]["image_size"],
                           "lineage": base.get("lineage")},
            "base_model_on_test": on_test}
