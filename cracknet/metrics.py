"""Binary classification metrics on crack probabilities, and pixel metrics of crack masks (plain numpy, no Ray,
no torch).

    m = binary_metrics(probs, labels, threshold=0.5)
    # {"accuracy", "precision", "recall", "f1", "roc_auc", "tp", "fp", "tn", "fn", "n"}
    p = mask_metrics([(probability_map, truth_mask), ...], tolerance=2)
    # {"precision", "recall", "f1", "iou", "threshold", "ods_f1", "ods_threshold", "images", ...}
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Callable

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


def evaluation(probs: np.ndarray, labels: np.ndarray, threshold: float, seed: int = 0,
               groups=None) -> dict:
    """Metrics at ``threshold`` and at 0.5, average precision, and bootstrap intervals at ``threshold``: over
    whole groups where ``groups`` names each image's (its photo, its structure; see ``bootstrap_intervals``),
    with the number of groups beside n and a caveat where they are too few for the interval to mean much."""
    metrics = binary_metrics(probs, labels, threshold)
    metrics["average_precision"] = average_precision(probs, labels)
    metrics["intervals_95"] = bootstrap_intervals(probs, labels, threshold, seed=seed, groups=groups)
    metrics.update(interval_basis(len(probs), groups))
    return metrics


FEW_GROUPS = 10  # below this many groups a bootstrap interval is itself unreliable, and says so


def interval_basis(n: int, groups=None) -> dict:
    """What an interval resampled: ``interval_unit`` (group or image), ``groups`` (how many), and ``interval_caveat``
    (a sentence, or absent) where fewer than ``FEW_GROUPS`` groups back it."""
    if groups is None:
        return {"interval_unit": "image", "groups": None}
    count = len(set(groups))
    basis = {"interval_unit": "group", "groups": count}
    if count < FEW_GROUPS:
        basis["interval_caveat"] = (
            f"The {n} images come from only {count} group{'s' if count != 1 else ''} (photos or structures), "
            "and images of one group succeed or fail together, so the interval resamples whole groups; with "
            f"fewer than {FEW_GROUPS} it is wide and still likely to miss what other groups show. Hold out more "
            "photos.")
    return basis


def recall_lower_bound(found: int, positives: int, confidence: float) -> float:
    """One-sided Clopper-Pearson lower confidence bound on a recall of ``found / positives``.

    The true recall is at least this with probability ``confidence``; with
    ``confidence`` 0 it is the plain estimate ``found / positives``.
    """
    if not 0 <= found <= positives or positives < 1:
        raise ValueError(f"need 0 <= found <= positives and positives >= 1, got {found} of {positives}")
    if confidence <= 0.0:
        return found / positives
    if found == 0:
        return 0.0
    alpha = 1.0 - confidence
    if found == positives:
        return float(alpha ** (1.0 / positives))
    n, j = positives, np.arange(found, positives + 1)
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1)))])
    log_choose = log_fact[n] - log_fact[j] - log_fact[n - j]

    def tail(p: float) -> float:  # P(X >= found) for X ~ Binomial(n, p); rises with p
        return float(np.exp(log_choose + j * np.log(p) + (n - j) * np.log1p(-p)).sum())

    low, high = 0.0, found / positives
    for _ in range(60):
        mid = (low + high) / 2.0
        low, high = (mid, high) if tail(mid) < alpha else (low, mid)
    return low


MAX_FALSE_ALARMS = 0.1  # the share of validation no-crack images a threshold may flag, at most


def operating_point(probs: np.ndarray, labels: np.ndarray, target: float, confidence: float = 0.95,
                    max_false_alarms: float = MAX_FALSE_ALARMS) -> dict:
    """The decision threshold for a target recall, chosen with a safety margin and a bound on false alarms.

    Missing a crack costs more than a false alarm, so the threshold is chosen
    for recall on purpose: the highest threshold whose recall on these scores
    has a ``confidence`` lower bound (Clopper-Pearson) of at least ``target``.
    The highest such threshold gives the best precision that recall allows; the
    bound keeps it away from the edge of the positives, where the plain
    "recall >= target here" rule sits and where a new sample of images loses
    recall about half the time. When even finding every positive cannot show the
    target at that confidence (too few positives: always so for the few hundred
    images an adaptation set holds), ``backed`` is False and the threshold is
    estimated from the positives' spread instead (``few_positives_threshold``).

    The invariant, whatever the recall rule says: the threshold never flags more
    than ``max_false_alarms`` of the negatives. Where the recall target would need
    more (scores that overlap, as a small adaptation set's do, or a mislabelled
    crack), the threshold is the lowest that keeps that bound, ``limited_by`` says
    ``false_alarms`` and ``recall`` says what it finds; a model never leaves
    training calling almost every image a crack.

    Candidate cuts are midway between neighbouring distinct scores (or half the
    lowest score), so the cut never sits on a score itself.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target recall must be in (0, 1], got {target}")
    if not 0.0 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0, 1), got {confidence}")
    if not 0.0 < max_false_alarms <= 1.0:
        raise ValueError(f"max_false_alarms must be in (0, 1], got {max_false_alarms}")
    positives = np.sort(probs[labels])[::-1]
    negatives = probs[~labels]
    if len(positives) == 0:
        return {"threshold": 0.5, "target_recall": target, "confidence": confidence, "positives": 0,
                "recall": float("nan"), "recall_lower_bound": float("nan"), "backed": False,
                "max_false_alarms": max_false_alarms, "negatives": int(len(negatives)),
                "false_alarms": float((negatives >= 0.5).mean()) if len(negatives) else float("nan"),
                "limited_by": "recall_target"}

    def found_at(k: int) -> int:  # positives kept when the cut sits just below the k-th highest positive
        return int((positives >= positives[k - 1]).sum())

    # The fewest top positives whose kept count has a lower bound >= target (the bound rises with k).
    def cut_below(k: int) -> float:  # midway between the k-th highest positive and the next lower score
        lowest_kept = positives[k - 1]
        below = probs[probs < lowest_kept]
        return float((lowest_kept + below.max()) / 2.0) if len(below) else float(lowest_kept / 2.0)

    low, high = 1, len(positives)
    if recall_lower_bound(found_at(high), len(positives), confidence) < target:
        threshold, backed = few_positives_threshold(positives, target, cut_below), False
    else:
        while low < high:
            mid = (low + high) // 2
            if recall_lower_bound(found_at(mid), len(positives), confidence) >= target:
                high = mid
            else:
                low = mid + 1
        threshold, backed = cut_below(low), True
    for_target = float((negatives >= threshold).mean()) if len(negatives) else 0.0
    floor = false_alarm_floor(probs, negatives, max_false_alarms)
    limited = floor > threshold
    threshold = max(threshold, floor)
    found = int((positives >= threshold).sum())
    return {"threshold": threshold, "target_recall": target, "confidence": confidence,
            "positives": int(len(positives)), "recall": found / len(positives),
            "recall_lower_bound": recall_lower_bound(found, len(positives), confidence), "backed": backed,
            "max_false_alarms": max_false_alarms, "negatives": int(len(negatives)),
            "false_alarms": float((negatives >= threshold).mean()) if len(negatives) else float("nan"),
            "false_alarms_for_target": for_target, "limited_by": "false_alarms" if limited else "recall_target"}


def false_alarm_floor(probs: np.ndarray, negatives: np.ndarray, max_false_alarms: float) -> float:
    """The lowest cut (midway between distinct scores) that flags at most ``max_false_alarms`` of the
    negatives; 0 when every negative may be flagged."""
    allowed = int(np.floor(max_false_alarms * len(negatives) + 1e-9))
    if allowed >= len(negatives):
        return 0.0
    highest_refused = np.sort(negatives)[::-1][allowed]  # this negative and every lower one stay unflagged
    above = probs[probs > highest_refused]
    return float((highest_refused + above.min()) / 2.0) if len(above) else float((highest_refused + 1.0) / 2.0)


OUTLIER_SPREADS = 3.0  # a positive this many robust standard deviations below the median (in logits) is an outlier


def few_positives_threshold(positives: np.ndarray, target: float, cut_below: Callable[[int], float]) -> float:
    """A threshold from too few positives to back the target: the lower of two estimates.

    (1) The cut that keeps every positive except outliers (more than ``OUTLIER_SPREADS`` robust
    standard deviations below the median logit: a hard or mislabelled image); (2) the
    ``1 - target`` quantile of a normal fitted to the positives' logits by median and MAD.
    Neither moves with one extreme score, so a single stray crack can no longer pull the
    threshold to ~0; with fewer than 5 positives no spread can be estimated and every one is kept.
    ``positives`` are sorted highest first; ``cut_below(k)`` is the cut just below the k-th.
    """
    if len(positives) < 5:
        return cut_below(len(positives))
    logits = np.log(np.clip(positives, 1e-6, 1 - 1e-6) / np.clip(1 - positives, 1e-6, 1 - 1e-6))
    centre = float(np.median(logits))
    spread = max(1.4826 * float(np.median(np.abs(logits - centre))), 0.25)
    kept = int((logits >= centre - OUTLIER_SPREADS * spread).sum())
    quantile = centre + spread * float(NormalDist().inv_cdf(1.0 - target)) if target < 1.0 else -np.inf
    return min(cut_below(kept), float(1.0 / (1.0 + np.exp(-quantile))))


def threshold_rule(target: float, confidence: float, max_false_alarms: float = MAX_FALSE_ALARMS) -> str:
    few = ("; with too few validation cracks to back that, the lower of the cut keeping every crack but "
           f"outliers and the {1 - target:.0%} quantile of a robust logit-normal fit to their scores")
    bound = f"; never flagging more than {max_false_alarms:.0%} of validation no-crack images"
    if confidence <= 0.0:
        return f"highest threshold with recall >= {target} on the validation split" + bound
    return (f"highest threshold whose validation recall has a {confidence:.0%} lower confidence bound "
            f"(Clopper-Pearson) of at least {target}" + few + bound)


def operating_point_caveat(point: dict, where: str = "in the validation split") -> str:
    """Sentences when the threshold could not be backed at the asked confidence or had to give recall up to
    keep false alarms bounded, else ""."""
    sentences = []
    recall = point.get("recall", point.get("val_recall"))  # a model card's operating point calls it val_recall
    if not point.get("backed", True):
        missed = round(point["positives"] * (1.0 - recall))
        sentences.append(
            f"Only {point['positives']} crack images {where}: too few to show recall >= {point['target_recall']} "
            f"with {point['confidence']:.0%} confidence even when every one is found, so the threshold is "
            f"estimated from the spread of their scores ({missed} of them score below it).")
    if point.get("limited_by") == "false_alarms":
        sentences.append(
            f"The recall target would flag {point['false_alarms_for_target']:.0%} of the no-crack images {where}; "
            f"the threshold flags at most {point['max_false_alarms']:.0%} of them (--max-false-alarms) and finds "
            f"{recall:.1%} of the cracks there.")
    return " ".join(sentences)


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


def resamples(n_items: int, groups, n: int, seed: int):
    """``n`` bootstrap resamples of item indices: items drawn with replacement, or with ``groups`` (one name per
    item) whole groups drawn with replacement and every item of a drawn group taken (a cluster bootstrap).

    Tiles of one photo share its light, surface and camera and are right or wrong together; resampling them as
    if independent gives intervals far too narrow for what other photos show. Resampling photos does not."""
    rng = np.random.default_rng(seed)
    if groups is None:
        for _ in range(n):
            yield rng.integers(0, n_items, n_items)
        return
    if len(groups) != n_items:
        raise ValueError(f"groups names {len(groups)} items for {n_items} scores")
    _, codes = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    order = np.argsort(codes, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(codes[order])) + 1]
    members = np.split(order, starts[1:])
    for _ in range(n):
        yield np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])


def bootstrap_intervals(probs: np.ndarray, labels: np.ndarray, threshold: float, n: int = 1000,
                        seed: int = 0, level: float = 0.95, groups=None) -> dict[str, list[float]]:
    """Percentile bootstrap intervals for the headline metrics: images resampled with replacement, or whole groups
    where ``groups`` names each image's (``resamples``)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    names = ("accuracy", "precision", "recall", "f1", "roc_auc", "average_precision")
    samples = {k: [] for k in names}
    for pick in resamples(len(probs), groups, n, seed):
        p, y = probs[pick], labels[pick]
        m = binary_metrics(p, y, threshold)
        m["average_precision"] = average_precision(p, y)
        for k in names:
            samples[k].append(m[k])
    tail = (1.0 - level) / 2.0 * 100.0
    return {k: [float(np.nanpercentile(v, tail)), float(np.nanpercentile(v, 100.0 - tail))]
            if np.isfinite(v).any() else [float("nan"), float("nan")]
            for k, v in ((k, np.asarray(v, dtype=np.float64)) for k, v in samples.items())}


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


def paired_difference(candidate: np.ndarray, champion: np.ndarray, labels: np.ndarray, candidate_threshold: float,
                      champion_threshold: float, n: int = 1000, seed: int = 0,
                      level: float = 0.95, groups=None) -> dict[str, dict[str, float]]:
    """Candidate minus champion on the same images, each at its own threshold: the difference of each gate metric
    and its percentile bootstrap interval (the same resample for both models, so that what the two models share
    cancels out; whole groups where ``groups`` names each image's, see ``resamples``)."""
    candidate, champion = np.asarray(candidate, np.float64), np.asarray(champion, np.float64)
    labels = np.asarray(labels).astype(bool)
    samples = {k: [] for k in GATE_METRICS}
    for pick in resamples(len(labels), groups, n, seed):
        a = binary_metrics(candidate[pick], labels[pick], candidate_threshold)
        b = binary_metrics(champion[pick], labels[pick], champion_threshold)
        for k in GATE_METRICS:
            samples[k].append(a[k] - b[k])
    a, b = binary_metrics(candidate, labels, candidate_threshold), binary_metrics(champion, labels, champion_threshold)
    tail = (1.0 - level) / 2.0 * 100.0
    return {k: {"candidate": a[k], "champion": b[k], "difference": a[k] - b[k],
                "interval": [float(np.percentile(samples[k], tail)), float(np.percentile(samples[k], 100 - tail))]}
            for k in GATE_METRICS}
