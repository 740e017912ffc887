"""The model card (``model.json``): where it lives, reading it back, and what it says about preprocessing.

    card = read_card("runs/demo")                  # the model/ folder or the training output above it
    spec = preprocessing_of(card)

Reading a card needs no torch, so the scoring driver, ``cracknet query`` and
``cracknet --help`` stay light; ``cracknet.model`` owns the weights.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

from cracknet import storage
from cracknet.data import NO_GROUPS, grouper, split_of
from cracknet.errors import CracknetError
from cracknet.transforms import Preprocessing

ARCHITECTURE = "resnet50"
WEIGHTS_FILE = "weights.pt"
CARD_FILE = "model.json"
REQUIRED_CARD_FIELDS = ("weights_file", "weights_sha256", "model_id", "threshold", "preprocessing")


def model_folder(uri: str) -> str:
    """Accept the model/ folder itself or the training output above it."""
    if storage.exists(storage.join(uri, CARD_FILE)):
        return uri
    inner = storage.join(uri, "model")
    if storage.exists(storage.join(inner, CARD_FILE)):
        return inner
    raise CracknetError(f"{uri} holds no finished model (no {CARD_FILE} there or in {inner}).")


def read_card(uri: str) -> dict[str, Any]:
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
    return hashlib.sha256(json.dumps(decides, sort_keys=True).encode()).hexdigest()[:16]


def record_evaluations(uri: str, rows: dict[str, dict[str, Any]]) -> str:
    """Add per-surface evaluation rows to a model's card (``evaluations``, by surface name; a surface
    evaluated again replaces its row). The weights and the model id do not change. Returns the card's URI."""
    card_uri = storage.join(model_folder(uri), CARD_FILE)
    card = json.loads(storage.read_bytes(card_uri))
    card["evaluations"] = {**card.get("evaluations", {}), **rows}
    storage.write_bytes(card_uri, card_bytes(card))
    return card_uri


def card_bytes(card: dict[str, Any]) -> bytes:
    """A card as written to ``model.json``: strict JSON (NaN as null), indented."""
    from cracknet.metrics import json_safe

    return json.dumps(json_safe(card), indent=2, allow_nan=False).encode()


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
