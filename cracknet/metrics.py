"""Binary classification metrics on crack probabilities (plain numpy, no Ray, no torch).

    m = binary_metrics(probs, labels, threshold=0.5)
    # {"accuracy", "precision", "recall", "f1", "roc_auc", "tp", "fp", "tn", "fn", "n"}
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


def choose_threshold(probs: np.ndarray, labels: np.ndarray) -> float:
    """The threshold with the best F1 on these scores; among equals, the one nearest 0.5.

    Candidates are 0.5 and the midpoints between neighbouring distinct scores,
    so the chosen cut never sits on a score itself.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    distinct = np.unique(probs)
    candidates = np.concatenate([[0.5], (distinct[:-1] + distinct[1:]) / 2.0])
    order = np.argsort(probs, kind="mergesort")
    sorted_probs = probs[order]
    positives_below = np.concatenate([[0], np.cumsum(labels[order])])  # positives among the i lowest
    below = np.searchsorted(sorted_probs, candidates, side="left")  # scores under each threshold
    tp = labels.sum() - positives_below[below]
    fp = (len(probs) - below) - tp
    fn = labels.sum() - tp
    denominator = 2 * tp + fp + fn
    f1 = np.divide(2.0 * tp, denominator, out=np.zeros(len(candidates)), where=denominator > 0)
    best = np.lexsort((np.abs(candidates - 0.5), -f1))[0]  # highest F1, then nearest 0.5
    return float(candidates[best])


def json_safe(value):
    """JSON has no NaN: metrics that are undefined (e.g. ROC-AUC on one class) become null."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
