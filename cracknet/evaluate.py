"""Metrics of a trained model on any labelled tree.

    cracknet evaluate --model runs/demo --data ../shared/data/metu-dev --json runs/demo/eval.json

Images are read and decoded in a thread pool with the model's own
preprocessing; unreadable images are skipped and listed, never fatal.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from cracknet import storage
from cracknet.data import LabelledImage, content_hash, discover
from cracknet.engine import Precision, predict
from cracknet.errors import CracknetError
from cracknet.metrics import binary_metrics, evaluation, operating_point
from cracknet.model import in_split, load_artifact, preprocessing_of
from cracknet.transforms import ImageError, Preprocessing, decode

READ_THREADS = 8


def _decode_one(image: LabelledImage, spec: Preprocessing, want: Callable[[str], bool] | None = None):
    try:
        data = storage.read_bytes(image.uri)
        sha = content_hash(data)
        if want is not None and not want(sha):
            return image, None, sha, None
        return image, decode(data, spec), sha, None
    except ImageError as exc:
        return image, None, None, str(exc)


def decoded_batches(images: list[LabelledImage], spec: Preprocessing, batch_size: int,
                    unreadable: list[tuple[str, str]], want: Callable[[str], bool] | None = None) -> Iterator[dict]:
    """Batches of decoded images in a thread pool; ``idx`` is each image's position in ``images``.

    Failures are appended to ``unreadable``; with ``want``, only images whose SHA-256 it accepts are decoded.
    """
    with ThreadPoolExecutor(READ_THREADS) as pool:
        for start in range(0, len(images), batch_size):
            good = []
            chunk = images[start:start + batch_size]
            decoded = pool.map(_decode_one, chunk, [spec] * len(chunk), [want] * len(chunk))
            for offset, (img, arr, sha, err) in enumerate(decoded):
                if err is not None:
                    unreadable.append((img.uri, err))
                elif arr is not None:
                    good.append((start + offset, img, arr))
            if good:
                yield {
                    "image": torch.from_numpy(np.stack([arr for _, _, arr in good])),
                    "label": torch.tensor([img.label for _, img, _ in good]),
                    "idx": torch.tensor([i for i, _, _ in good]),
                }


@dataclass
class Predictions:
    """One model's crack probabilities for the readable images of a labelled tree."""

    uris: list[str]
    probs: np.ndarray
    labels: np.ndarray
    unreadable: list[tuple[str, str]]
    source: str = ""


def predict_tree(model, card: dict, data_uri: str, batch_size: int = 64, split: str = "all") -> Predictions:
    """Score a labelled tree; ``split`` keeps only the images the model's training run put in that split."""
    spec = preprocessing_of(card)
    images = discover(data_uri, require_both_classes=False)  # e.g. a folder of known cracks
    unreadable: list[tuple[str, str]] = []
    want = None if split == "all" else in_split(card, split)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    probs, labels, idx = predict(model, decoded_batches(images, spec, batch_size, unreadable, want), spec, device,
                                 Precision.for_device(device))
    source = data_uri if split == "all" else f"{data_uri} ({split} split)"
    if len(idx) == 0:
        if len(unreadable) == len(images):
            uri, error = unreadable[0]
            raise CracknetError(f"None of the {len(images)} images under {data_uri} could be read "
                                f"(the first: {uri}: {error}).")
        raise CracknetError(f"None of the {len(images)} images under {data_uri} is in the {split} split of the "
                            f"model's training run; use --split all for other data.")
    return Predictions([images[int(i)].uri for i in idx], probs, labels, unreadable, source)


def evaluate(model_uri: str, data_uri: str, batch_size: int = 64, target_recall: float | None = None,
             recall_confidence: float = 0.95) -> dict:
    """Metrics of a model on a labelled tree at its own threshold and at 0.5, with bootstrap intervals.

    With ``target_recall``, also the threshold this data would choose for that recall (by the same rule
    as training, see ``metrics.operating_point``), and its precision.
    """
    model, card = load_artifact(model_uri)
    found = predict_tree(model, card, data_uri, batch_size)
    probs, labels, unreadable = found.probs, found.labels, found.unreadable
    report = {
        "model": card["folder"],
        "model_id": card["model_id"],
        "data": data_uri,
        "images": len(found.uris) + len(unreadable),
        "threshold": card["threshold"],
        "metrics": evaluation(probs, labels, card["threshold"]),
        "metrics_at_0.5": binary_metrics(probs, labels, 0.5),
        "unreadable": [{"uri": uri, "error": err} for uri, err in unreadable],
    }
    if target_recall is not None:
        point = operating_point(probs, labels, target_recall, recall_confidence)
        report["for_target_recall"] = {**point, "metrics": binary_metrics(probs, labels, point["threshold"])}
    return report
