"""The model card (``model.json``): what it holds, where it lives, reading it back, and what it says about
preprocessing.

    card = read_card("runs/demo")                  # the model/ folder or the training output above it
    card = read_model("models:/cracknet@champion") # the same, through the registry
    spec = preprocessing_of(card)

Reading a card needs no torch, so the scoring driver, ``cracknet query`` and
``cracknet --help`` stay light; ``cracknet.model.network`` owns the weights, and training fills a card in
(``cracknet.train.card_writer``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

from cracknet import storage
from cracknet.data.splits import NO_GROUPS, grouper, split_of
from cracknet.errors import CracknetError
from cracknet.images.decoding import Preprocessing
from cracknet.registry import versions

ARCHITECTURE = "resnet50"
WEIGHTS_FILE = "weights.pt"
CARD_FILE = "model.json"
REQUIRED_CARD_FIELDS = ("weights_file", "weights_sha256", "model_id", "threshold", "preprocessing")


FORMAT_VERSION = 1
# tracking URI may also carry credentials)


MODEL_SIZE = "the model's input size"
PHOTO_SIZE = "each photo's own size, drawn as scoring draws it (its crops' maps stitched, gated by the threshold)"


def has_decoder(card: dict[str, Any]) -> bool:
    """Whether the model also draws crack masks (a ``CrackSegmenter``)."""
    return "decoder" in card


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
    ``models:/...``, is read by ``read_model``, which resolves it and then reads its card here)."""
    if uri.startswith(storage.REGISTRY_PREFIX):
        raise CracknetError(f"{uri} is a registered version; it is read through the registry (read_model).")
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
    from cracknet.measure.metrics import json_safe

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


def read_model(uri: str, flag: str | None = None) -> dict:
    """The card of the model at ``uri``; a registered version (models:/...) resolved once, against ``flag`` or
    MLFLOW_TRACKING_URI, its card then naming the version under ``registry``."""
    if not versions.is_registry_uri(uri):
        return read_card(uri)
    registered = versions.resolve(uri, flag)
    card = read_card(registered["artifact_uri"])
    versions.check_version(card, registered)
    return {**card, "registry": registered}
