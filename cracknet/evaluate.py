"""Metrics of a trained model on any labelled tree.

    cracknet evaluate --model runs/demo --data ../shared/data/metu-dev --json runs/demo/eval.json

Images are read and decoded in a thread pool with the model's own
preprocessing; unreadable images are skipped and listed, never fatal.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch

from cracknet import storage
from cracknet.data import LabelledImage, discover
from cracknet.engine import Precision, predict
from cracknet.metrics import binary_metrics, evaluation, threshold_for_recall
from cracknet.model import load_artifact, preprocessing_of
from cracknet.transforms import ImageError, Preprocessing, decode

READ_THREADS = 8


def _decode_one(image: LabelledImage, spec: Preprocessing):
    try:
        return image, decode(storage.read_bytes(image.uri), spec), None
    except ImageError as exc:
        return image, None, str(exc)


def decoded_batches(images: list[LabelledImage], spec: Preprocessing, batch_size: int,
                    unreadable: list[tuple[str, str]]) -> Iterator[dict]:
    """Batches of decoded images in a thread pool; failures are appended to ``unreadable``."""
    with ThreadPoolExecutor(READ_THREADS) as pool:
        for start in range(0, len(images), batch_size):
            good = []
            for img, arr, err in pool.map(_decode_one, images[start:start + batch_size], [spec] * batch_size):
                if err is None:
                    good.append((img, arr))
                else:
                    unreadable.append((img.uri, err))
            if good:
                yield {
                    "image": torch.from_numpy(np.stack([arr for _, arr in good])),
                    "label": torch.tensor([img.label for img, _ in good]),
                    "idx": torch.arange(start, start + len(good)),
                }


def evaluate(model_uri: str, data_uri: str, batch_size: int = 64, target_recall: float | None = None) -> dict:
    """Metrics of a model on a labelled tree at its own threshold and at 0.5, with bootstrap intervals.

    With ``target_recall``, also the threshold this data would choose for that recall, and its precision.
    """
    model, card = load_artifact(model_uri)
    spec = preprocessing_of(card)
    images = discover(data_uri, require_both_classes=False)  # e.g. a folder of known cracks
    unreadable: list[tuple[str, str]] = []
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    probs, labels, _ = predict(model, decoded_batches(images, spec, batch_size, unreadable), spec, device,
                               Precision.for_device(device))
    report = {
        "model": card["folder"],
        "model_id": card["model_id"],
        "data": data_uri,
        "images": len(images),
        "threshold": card["threshold"],
        "metrics": evaluation(probs, labels, card["threshold"]),
        "metrics_at_0.5": binary_metrics(probs, labels, 0.5),
        "unreadable": [{"uri": uri, "error": err} for uri, err in unreadable],
    }
    if target_recall is not None:
        threshold = threshold_for_recall(probs, labels, target_recall)
        report["for_target_recall"] = {"target_recall": target_recall, "threshold": threshold,
                                       "metrics": binary_metrics(probs, labels, threshold)}
    return report
