"""ResNet50 with a binary crack head, its starting weights, and the model artifact.

    model = build_model()                         # build_model(masks=True): with the crack-mask decoder
    load_starting_weights(model, "imagenet")      # or "none", a path, s3://...
    save_artifact("runs/demo/model", model.state_dict(), card)
    model, card = load_artifact("runs/demo")      # the model/ folder or the run above it

The artifact is a folder holding ``weights.pt`` (a plain state dict of tensors,
loaded back with ``torch.load(weights_only=True)`` so no arbitrary Python object
is ever unpickled) and ``model.json`` (the model card: architecture, its mask
decoder if it has one,
preprocessing, classes, threshold, metrics, data fingerprint, versions).
``model.json`` is written last and records the SHA-256 of the weights, so a run
that died half-way never leaves something that looks like a finished model.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import torch
import torchvision
from torch import nn

from cracknet import storage
from cracknet.errors import CracknetError
from cracknet.model.card import (ARCHITECTURE, CARD_FILE, WEIGHTS_FILE, card_bytes, has_decoder, model_identity,
                                 read_card)
from cracknet.model.masks import CrackSegmenter
from cracknet.storage import content_hash

HEAD_PREFIX = "fc."
SEGMENTER_PREFIX = "classifier."
DECODER_PARTS = ("lateral", "smooth", "full", "head")  # CrackSegmenter's own modules


def build_model(masks: bool = False) -> nn.Module:
    """torchvision ResNet50 whose classifier is one crack logit; with ``masks``, inside a ``CrackSegmenter``."""
    model = torchvision.models.resnet50(weights=None, zero_init_residual=True)
    model.fc = nn.Linear(model.fc.in_features, 1)
    return CrackSegmenter(model) if masks else model


def classifier_of(model: nn.Module) -> nn.Module:
    """The ResNet50 classifier itself, inside a segmenter or not: what computes ``is_crack``."""
    return model.classifier if isinstance(model, CrackSegmenter) else model


def in_backbone(name: str) -> bool:
    """Whether a parameter belongs to the ResNet50 encoder (not to its crack head or a mask decoder)."""
    if name.split(".")[0] in DECODER_PARTS:
        return False
    return not name.removeprefix(SEGMENTER_PREFIX).startswith(HEAD_PREFIX)


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze or unfreeze everything but the heads, crack and mask (stage one of two-stage fine-tuning)."""
    for name, param in model.named_parameters():
        param.requires_grad = trainable or not in_backbone(name)


def imagenet_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's ImageNet ResNet50 weights, through torchvision's own download and cache."""
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # URLError, socket errors, hash mismatch: all mean "not available"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CracknetError(
            f"Could not get torchvision's ImageNet ResNet50 weights ({reason}); "
            "use --weights none to train from random init, or --weights PATH|s3://... "
            "for a saved torchvision state dict."
        ) from None


def read_state_dict(uri: str) -> dict[str, torch.Tensor]:
    """A state dict of tensors from a file or object store, never unpickling other objects."""
    return parse_state_dict(storage.read_bytes(uri), uri)


def parse_state_dict(data: bytes, uri: str) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CracknetError(
            f"Refusing to load {uri}: it holds Python objects other than tensors, "
            "and loading them could run code."
        ) from None
    except Exception as exc:
        raise CracknetError(f"{uri} is not a readable PyTorch weights file ({type(exc).__name__}).") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CracknetError(f"{uri} does not hold a state dict (a mapping of names to tensors).")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_backbone(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a torchvision ResNet50 state dict into everything but a head of another shape."""
    own = model.state_dict()
    head_fits = all(k in state and state[k].shape == own[k].shape for k in own if k.startswith(HEAD_PREFIX))
    wanted = {k: v for k, v in state.items() if head_fits or not k.startswith(HEAD_PREFIX)}
    missing = sorted(k for k in own if k not in wanted and (head_fits or not k.startswith(HEAD_PREFIX)))
    unexpected = sorted(k for k in wanted if k not in own)
    wrong = sorted(k for k in wanted if k in own and wanted[k].shape != own[k].shape)
    if missing or unexpected or wrong:
        problems = [f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                    if keys]
        raise CracknetError(f"{source} is not a ResNet50 state dict ({'; '.join(problems)}).")
    model.load_state_dict(wanted, strict=False)


def load_starting_weights(model: nn.Module, weights: str) -> None:
    """Apply ``--weights``: imagenet, none, or a state-dict file (path or s3://)."""
    if weights == "none":
        return
    state = imagenet_state_dict() if weights == "imagenet" else read_state_dict(weights)
    load_backbone(classifier_of(model), state, "the ImageNet weights" if weights == "imagenet" else weights)


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """A cracknet model's weights into ``model``, with or without a mask decoder on either side: a classifier's
    weights start a segmenter's encoder and crack head (its decoder stays new), and a segmenter's classifier part
    is a classifier."""
    segmenter_state = any(k.startswith(SEGMENTER_PREFIX) for k in state)
    if isinstance(model, CrackSegmenter) and segmenter_state:
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise CracknetError(f"{source} is not a cracknet crack-mask model ({str(exc).splitlines()[0]}).") from None
        return
    if segmenter_state:
        state = {k.removeprefix(SEGMENTER_PREFIX): v for k, v in state.items() if k.startswith(SEGMENTER_PREFIX)}
    load_backbone(classifier_of(model), state, source)


def save_artifact(folder: str, state_dict: dict[str, torch.Tensor], card: dict[str, Any]) -> dict[str, Any]:
    """Write weights, then the card naming their hash; returns the card as written."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, buffer)
    data = buffer.getvalue()
    digest = content_hash(data)
    card = {**card, "architecture": ARCHITECTURE, "weights_file": WEIGHTS_FILE, "weights_sha256": digest}
    card["model_id"] = model_identity(card)
    written = card_bytes(card)  # refused before anything is written when its deciding numbers are not finite
    storage.write_bytes(storage.join(folder, WEIGHTS_FILE), data)
    storage.write_bytes(storage.join(folder, CARD_FILE), written)
    return card


def load_artifact(uri: str, model_id: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The trained model (in eval mode) and its card.

    With ``model_id``, refuse a model other than the one named (e.g. replaced since a run began and
    recorded its id).
    """
    if uri.startswith(storage.REGISTRY_PREFIX):
        from cracknet.model.card import read_model

        card = read_model(uri)
    else:
        card = read_card(uri)
    if model_id is not None and card["model_id"] != model_id:
        raise CracknetError(f"The model at {card['folder']} is now {card['model_id']}, not the {model_id} this "
                            "run was started with (it was replaced during the run); rerun to use it.")
    weights_uri = storage.join(card["folder"], card["weights_file"])
    data = storage.read_bytes(weights_uri)
    if content_hash(data) != card["weights_sha256"]:
        raise CracknetError(f"{weights_uri} does not match the hash recorded in {CARD_FILE}; the artifact is damaged.")
    model = build_model(masks=has_decoder(card))
    load_model_state(model, parse_state_dict(data, weights_uri), weights_uri)
    return model.eval(), card
