"""The model card (``model.json``): what it holds, where it lives, reading it back, and what it says about
preprocessing.

    card = build_card(cfg, spec, plan, predictions, ...)   # at the end of training (then model.save_artifact)
    card = read_card("runs/demo")                  # the model/ folder or the training output above it
    spec = preprocessing_of(card)

Reading a card needs no torch, so the scoring driver, ``cracknet query`` and
``cracknet --help`` stay light; ``cracknet.model`` owns the weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import datetime, timezone
from typing import Any, Callable

from cracknet import storage
from cracknet.data import CLASS_NAMES, NO_GROUPS, grouper, split_of
from cracknet.errors import CracknetError
from cracknet.transforms import Preprocessing

ARCHITECTURE = "resnet50"
WEIGHTS_FILE = "weights.pt"
CARD_FILE = "model.json"
REQUIRED_CARD_FIELDS = ("weights_file", "weights_sha256", "model_id", "threshold", "preprocessing")


FORMAT_VERSION = 1
NOT_RECORDED = ("overwrite", "ray_address", "verbose", "mlflow")  # settings that say nothing about the model (the
# tracking URI may also carry credentials)


def build_card(cfg, spec: Preprocessing, plan, predictions: dict[str, Any], epochs_completed: int, kept_epoch: int,
               seconds: float, checkpoints: str, versions: dict[str, str]) -> dict[str, Any]:
    """The card of a trained model: classes, preprocessing, the threshold and how it was chosen, validation and
    test metrics, the data and its splits, the training settings and history, versions.

    ``cfg`` is the run's TrainConfig, ``plan`` its data.SplitPlan, ``predictions`` what the workers returned:
    validation and test (probabilities, labels), the epoch history and the restart count. The weights' hash and
    the model id are added when the artifact is saved (``model.save_artifact``).
    """
    from cracknet.metrics import binary_metrics, evaluation, threshold_rule
    from cracknet.monitor import probability_histogram

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
        # What monitoring compares a first night with (cracknet.monitor): the validation images' probabilities.
        "monitoring": {"validation_probability_histogram": probability_histogram(val_probs)},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(mask_section(predictions["masks"], predictions.get("masks_at", MODEL_SIZE)) if "masks" in predictions
           else {}),
    }


def operating_point_of(cfg, val_probs, val_labels) -> dict:
    """The operating point (threshold and what backs it) a run's settings choose on its validation predictions."""
    from cracknet.metrics import operating_point

    return operating_point(val_probs, val_labels, cfg.target_recall, cfg.recall_confidence, cfg.max_false_alarms)


def split_groups(plan, split: str) -> list[str] | None:
    """The group (photo, structure) of each image of a split, in the order its predictions come (the split's row
    index); None where the run did not group its images."""
    if plan.grouping == NO_GROUPS:
        return None
    return [plan.groups[uri] for uri, _ in sorted(plan.members[split].items(), key=lambda item: item[1])]


MODEL_SIZE = "the model's input size"
PHOTO_SIZE = "each photo's own size, drawn as scoring draws it (its crops' maps stitched, gated by the threshold)"


def mask_section(pairs: dict[str, list], at: str = MODEL_SIZE) -> dict[str, Any]:
    """What the card says about the crack-mask decoder: its shape, and the mask threshold chosen on validation
    (the best fixed one, ODS) with the pixel metrics at it on validation and test; ``pairs`` are (probability map
    in [0, 1], true mask) per split, measured ``at`` the size they say."""
    from cracknet.geometry import choose_width_threshold
    from cracknet.masks import DECODER_CHANNELS, FULL_RESOLUTION_CHANNELS
    from cracknet.metrics import mask_metrics

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


def has_decoder(card: dict[str, Any]) -> bool:
    """Whether the model also draws crack masks (a ``CrackSegmenter``)."""
    return "decoder" in card


def lineage(base: dict[str, Any], on_test: dict[str, Any]) -> dict[str, Any]:
    """Where an adapted model came from: the base model, what it was trained on (and its own lineage), and
    how it did on this run's test split before adaptation, at its own threshold."""
    return {"base_model": {"uri": base["folder"], "model_id": base["model_id"],
                           "data_uri": base.get("data", {}).get("uri"),
                           "data_fingerprint": base.get("data", {}).get("fingerprint"),
                           "threshold": base["threshold"], "image_size": base["preprocessing"]["image_size"],
                           "lineage": base.get("lineage")},
            "base_model_on_test": on_test}


def model_folder(uri: str) -> str:
    """Accept the model/ folder itself or the training output above it."""
    if storage.exists(storage.join(uri, CARD_FILE)):
        return uri
    inner = storage.join(uri, "model")
    if storage.exists(storage.join(inner, CARD_FILE)):
        return inner
    raise CracknetError(f"{uri} holds no finished model (no {CARD_FILE} there or in {inner}).")


def read_card(uri: str) -> dict[str, Any]:
    """The card of the model at ``uri``: a model folder or the training output above it (a registered version,
    ``models:/...``, is resolved by ``registry.read_model``, which then reads its card here)."""
    if uri.startswith(storage.REGISTRY_PREFIX):
        raise CracknetError(f"{uri} is a registered version; it is read through the registry (registry.read_model).")
    folder = model_folder(uri)
    try:
        card = json.loads(storage.read_bytes(storage.join(folder, CARD_FILE)))
    except json.JSONDecodeError:
        raise CracknetError(f"{storage.join(folder, CARD_FILE)} is not valid JSON.") from None
    if card.get("architecture") != ARCHITECTURE:
        raise CracknetError(f"{folder} holds a {card.get('architecture')!r} model; cracknet reads {ARCHITECTURE}.")
    preprocessing = card.get("preprocessing") if isinstance(card.get("preprocessing"), dict) else {}
    missing = [k for k in REQUIRED_CARD_FIELDS if k not in card] + \
        [f"preprocessing.{k}" for k in ("image_size", "mean", "std") if k not in preprocessing]
    if missing:
        raise CracknetError(
            f"{storage.join(folder, CARD_FILE)} lacks {', '.join(missing)}; it is not a cracknet model card.")
    problem = deciding_numbers(card)
    if problem:
        raise CracknetError(f"{storage.join(folder, CARD_FILE)} is not a usable model card: its {problem}.")
    if card["model_id"] not in (model_identity(card), card["weights_sha256"][:16]):  # the second: cards before 0.3
        raise CracknetError(f"{storage.join(folder, CARD_FILE)} names model {card['model_id']}, but its weights, "
                            "threshold and preprocessing make another model: the card was edited after the model was "
                            "saved. Save it as a new model (a new id) rather than change what an id means.")
    return {**card, "folder": folder}


def model_identity(card: dict[str, Any]) -> str:
    """A model's id: what decides every verdict it gives -- the weights' SHA-256, the threshold and the
    preprocessing -- so that no edit of the card can keep an id while changing its verdicts."""
    decides = {"weights_sha256": card["weights_sha256"], "threshold": card.get("threshold"),
               "preprocessing": card.get("preprocessing")}
    if "mask" in card:  # models that draw masks: their mask threshold decides which pixels are crack
        decides["mask_threshold"] = card["mask"].get("threshold")
        if "width_threshold" in card["mask"]:  # and the cut their widths are read from
            decides["width_threshold"] = card["mask"]["width_threshold"]
    return hashlib.sha256(json.dumps(decides, sort_keys=True).encode()).hexdigest()[:16]


def record_evaluations(uri: str, rows: dict[str, dict[str, Any]]) -> str:
    """Add per-surface evaluation rows to a model's card (``evaluations``, by surface name; a surface
    evaluated again replaces its row). The weights and the model id do not change. Returns the card's URI.
    ``uri`` is the model's folder (or the training output above it)."""
    card_uri = storage.join(read_card(uri)["folder"], CARD_FILE)
    card = json.loads(storage.read_bytes(card_uri))
    card["evaluations"] = {**card.get("evaluations", {}), **rows}
    storage.write_bytes(card_uri, card_bytes(card))
    return card_uri


def card_bytes(card: dict[str, Any]) -> bytes:
    """A card as written to ``model.json``: strict JSON (an undefined metric as null), indented; refused when a
    number that decides the model's verdicts is not a finite number in its range (``deciding_numbers``)."""
    from cracknet.metrics import json_safe

    problem = deciding_numbers(card)
    if problem:
        raise CracknetError(f"The model's {problem}, so it was not saved: training did not converge (lower --lr or "
                            "--finetune-lr, or check the data).")
    return json.dumps(json_safe(card), indent=2, allow_nan=False).encode()


def deciding_numbers(card: dict[str, Any]) -> str:
    """What is wrong with the numbers that decide a model's verdicts (its ``model_identity``), as a phrase; "" when
    each is a finite number in its range."""
    from cracknet.numbers import POSITIVE, SHARE, Range, checked

    preprocessing = card.get("preprocessing") or {}
    numbers = [("threshold", card["threshold"], SHARE)] if "threshold" in card else []
    numbers += [("normalisation mean", v, SHARE) for v in preprocessing.get("mean", [])]
    numbers += [("normalisation std", v, Range(0, 10, low_open=True)) for v in preprocessing.get("std", [])]
    if "mask" in card:
        numbers += [("mask threshold", card["mask"]["threshold"], SHARE)] if "threshold" in card["mask"] else []
        if card["mask"].get("width_threshold") is not None:
            numbers.append(("width threshold", card["mask"]["width_threshold"], POSITIVE))
    for name, value, allowed in numbers:
        try:
            checked(name, value, allowed)
        except CracknetError:
            return f"{name} is {value!r}, not a number {allowed.describe()}"
    return ""


def in_split(card: dict[str, Any], split: str, root: str) -> Callable[[str, str], bool]:
    """Whether an image of the labelled tree at ``root`` (by its URI and the SHA-256 of its bytes) fell in
    ``split`` of the model's own training run: by its group where the run grouped its images, else by hash."""
    training, grouping = card.get("training", {}), card.get("data", {}).get("grouping", {"by": NO_GROUPS})
    if "val_fraction" not in training:
        raise CracknetError(f"The model {card.get('folder', '')} does not record its splits; use --split all.")
    group_of = grouper(grouping["by"], root)
    if group_of is None:
        return lambda uri, sha: split_of(sha, training["val_fraction"], training["test_fraction"]) == split
    held_out = {name: set(grouping[f"{name}_groups"]) for name in ("val", "test")}

    def member(uri: str, sha: str) -> bool:
        group = group_of(uri)
        found = next((name for name, groups in held_out.items() if group in groups), "train")
        return found == split

    return member


def preprocessing_of(card: dict[str, Any]) -> Preprocessing:
    p = card["preprocessing"]
    return Preprocessing(image_size=p["image_size"], mean=tuple(p["mean"]), std=tuple(p["std"]))
