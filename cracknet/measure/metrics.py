"""Binary classification metrics on crack probabilities, and pixel metrics of crack masks (plain numpy, no Ray,
no torch).

    m = binary_metrics(probs, labels, threshold=0.5)
    # {"accuracy", "precision", "recall", "f1", "roc_auc", "tp", "fp", "tn", "fn", "n"}
    p = mask_metrics([(probability_map, truth_mask), ...], tolerance=2)
    # {"precision", "recall", "f1", "iou", "threshold", "ods_f1", "ods_threshold", "images", ...}
"""

from __future__ import annotations

import numpy as np


def roc_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney U statistic, ties counted half); nan with one class."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(probs, kind="mergesort")
    sorted_probs = probs[order]
    ranks = np.empty(len(probs), dtype=np.float64)
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_probs, return_index=True, return_counts=True)
    for start, count in zip(first, counts):
        ranks[order[start:start + count]] = start + (count + 1) / 2.0
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def binary_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    predicted = probs >= threshold
    tp = int((predicted & labels).sum())
    fp = int((predicted & ~labels).sum())
    fn = int((~predicted & labels).sum())
    tn = int((~predicted & ~labels).sum())
    n = tp + fp + fn + tn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / n if n else float("nan"),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "roc_auc": roc_auc(probs, labels),
        "threshold": float(threshold),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": n,
    }


def curve_points(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(false-positive rate, recall, precision, threshold) with the cut at each distinct score, highest first.

    Tied scores are one step: each point counts every image scoring at or above its threshold.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(-probs, kind="mergesort")
    sorted_probs, sorted_labels = probs[order], labels[order]
    last = np.r_[np.nonzero(np.diff(sorted_probs))[0], len(probs) - 1]
    tp, fp = np.cumsum(sorted_labels)[last], np.cumsum(~sorted_labels)[last]
    return fp / max(1, (~labels).sum()), tp / max(1, labels.sum()), tp / (tp + fp), sorted_probs[last]


def average_precision(probs: np.ndarray, labels: np.ndarray) -> float:
    """Area under the precision-recall curve as a step function (precision at each positive, averaged)."""
    if not np.asarray(labels).astype(bool).any():
        return float("nan")
    _, recall, precision, _ = curve_points(probs, labels)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def json_safe(value):
    """JSON has no NaN: metrics that are undefined (e.g. ROC-AUC on one class) become null."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------------
# Pixel metrics of crack masks


MASK_TOLERANCE = 2.0  # pixels: a predicted crack pixel this close to a true one counts (the usual crack protocol)
MASK_THRESHOLDS = np.round(np.arange(0.05, 1.0, 0.05), 2)


def _mask_counts(probs: np.ndarray, truth: np.ndarray, thresholds: np.ndarray, tolerance: float) -> np.ndarray:
    """Per threshold: predicted pixels near a true one, predicted, true pixels near a predicted one, true,
    intersection and union (the last two without tolerance)."""
    from scipy import ndimage

    truth = np.asarray(truth, dtype=bool)
    near_truth = ndimage.distance_transform_edt(~truth) <= tolerance if truth.any() else np.zeros_like(truth)
    rows = []
    for t in thresholds:
        predicted = probs >= t
        near_predicted = ndimage.distance_transform_edt(~predicted) <= tolerance if predicted.any() \
            else np.zeros_like(predicted)
        rows.append((int((predicted & near_truth).sum()), int(predicted.sum()), int((truth & near_predicted).sum()),
                     int(truth.sum()), int((predicted & truth).sum()), int((predicted | truth).sum())))
    return np.array(rows, dtype=np.int64)


def pixel_counts(predicted: np.ndarray, truth: np.ndarray, tolerance: float = MASK_TOLERANCE) -> np.ndarray:
    """One photo's drawn mask against a true one: predicted pixels near a true one, predicted, true pixels near a
    predicted one, true (``mask_metrics``'s counts at one cut)."""
    return _mask_counts(np.asarray(predicted, dtype=np.float32), truth, np.array([0.5]), tolerance)[0][:4]


def _f1(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    matched_p, predicted, matched_t, true = counts[..., 0], counts[..., 1], counts[..., 2], counts[..., 3]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, matched_p / np.maximum(predicted, 1), 1.0 if not true.any() else 0.0)
        recall = np.where(true > 0, matched_t / np.maximum(true, 1), 1.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return precision, recall, f1


def mask_metrics(pairs, threshold: float = 0.5, tolerance: float = MASK_TOLERANCE,
                 thresholds: np.ndarray = MASK_THRESHOLDS) -> dict:
    """Pixel precision, recall and F1 with a distance tolerance, and IoU, of probability maps against true masks
    (pairs of arrays of one photo's size), summed over the photos at ``threshold``; and the best fixed threshold
    over the set (ODS) with its F1. Precision: predicted crack pixels within ``tolerance`` px of a true one;
    recall: true crack pixels within ``tolerance`` px of a predicted one; IoU: exact pixels."""
    tally = MaskTally(threshold, tolerance, thresholds)
    for probs, truth in pairs:
        tally.add(probs, truth)
    return tally.result()


class MaskTally:
    """``mask_metrics`` one photo at a time, holding only the counts (for photos too many to keep in memory)."""

    def __init__(self, threshold: float = 0.5, tolerance: float = MASK_TOLERANCE,
                 thresholds: np.ndarray = MASK_THRESHOLDS):
        self.threshold, self.tolerance = float(threshold), float(tolerance)
        self.grid = np.unique(np.append(thresholds, threshold))
        self.total, self.images = np.zeros((len(self.grid), 6), dtype=np.int64), 0
        self.at = int(np.flatnonzero(self.grid == self.threshold)[0])
        self.per_image: list[np.ndarray] = []  # each photo's counts at ``threshold``: per-photo F1 and intervals

    def add(self, probs, truth) -> None:
        probs = np.asarray(probs, dtype=np.float32)
        if probs.shape != np.shape(truth):
            raise ValueError(f"A probability map of {probs.shape} cannot be scored against a mask of "
                             f"{np.shape(truth)}.")
        counts = _mask_counts(probs, truth, self.grid, self.tolerance)
        self.total += counts
        self.per_image.append(counts[self.at])
        self.images += 1

    def result(self) -> dict:
        total, grid, threshold, at = self.total, self.grid, self.threshold, self.at
        precision, recall, f1 = _f1(total)
        best = int(np.argmax(f1))
        return {"precision": float(precision[at]), "recall": float(recall[at]), "f1": float(f1[at]),
                "iou": float(total[at, 4] / total[at, 5]) if total[at, 5] else 1.0, "threshold": threshold,
                "ods_f1": float(f1[best]), "ods_threshold": float(grid[best]), "tolerance_px": self.tolerance,
                "images": self.images, "crack_pixels": int(total[at, 3]),
                "f1_interval_95": self.f1_interval(), "interval_unit": "photo"}

    def photo_f1(self) -> list[float]:
        """Each photo's own F1 at the threshold, in the order they were added."""
        return [float(_f1(counts)[2]) for counts in self.per_image]

    def f1_interval(self, n: int = 1000, seed: int = 0, level: float = 0.95) -> list[float]:
        """A percentile bootstrap interval of the pooled F1 at the threshold, resampling whole photos (pixels of one
        photo are not independent evidence)."""
        if not self.per_image:
            return [float("nan"), float("nan")]
        counts = np.stack(self.per_image)
        rng = np.random.default_rng(seed)
        draws = counts[rng.integers(0, len(counts), (n, len(counts)))].sum(axis=1)  # (n, 6)
        f1 = _f1(draws)[2]
        tail = (1.0 - level) / 2.0 * 100.0
        return [float(np.percentile(f1, tail)), float(np.percentile(f1, 100.0 - tail))]


GATE_METRICS = ("recall", "precision", "f1")


PROBABILITY_BINS = 20  # equal-width bins of [0, 1]


def histogram(values, edges) -> list[int]:
    values = np.asarray([v for v in values if v is not None and v == v], dtype=np.float64)
    return [int(c) for c in np.histogram(values, bins=np.asarray(edges, dtype=np.float64))[0]]


def probability_histogram(probs) -> list[int]:
    return histogram(probs, np.linspace(0.0, 1.0, PROBABILITY_BINS + 1))
