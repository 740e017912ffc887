"""The operating point: the threshold a model ships with, chosen on validation images by a stated rule.

    point = operating_point(val_probs, val_labels, target=0.95, confidence=0.95)

The rule, its recall bound and the false alarms it allows are written into the card beside the threshold.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Callable, Optional

import numpy as np

from cracknet.numbers import Range, checked


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

    threshold, backed = recall_cut(probs, positives, target, confidence)
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


def recall_cut(probs: np.ndarray, positives: np.ndarray, target: float, confidence: float) -> tuple[float, bool]:
    """The highest cut whose recall on ``positives`` (sorted, highest first) has a ``confidence`` lower bound of at
    least ``target``, and True; or, where even finding every positive cannot show that, the estimate from their
    spread (``few_positives_threshold``) and False."""
    def found_at(k: int) -> int:  # positives kept when the cut sits just below the k-th highest positive
        return int((positives >= positives[k - 1]).sum())

    def cut_below(k: int) -> float:  # midway between the k-th highest positive and the next lower score
        lowest_kept = positives[k - 1]
        below = probs[probs < lowest_kept]
        return float((lowest_kept + below.max()) / 2.0) if len(below) else float(lowest_kept / 2.0)

    low, high = 1, len(positives)
    if recall_lower_bound(found_at(high), len(positives), confidence) < target:
        return few_positives_threshold(positives, target, cut_below), False
    while low < high:  # the fewest top positives whose kept count has a lower bound >= target (it rises with k)
        mid = (low + high) // 2
        if recall_lower_bound(found_at(mid), len(positives), confidence) >= target:
            high = mid
        else:
            low = mid + 1
    return cut_below(low), True


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


RECALL = Range(0, 1, low_open=True)                # a recall target, or a share of false alarms allowed


CONFIDENCE = Range(0, 1, high_open=True)


def check_recall_settings(target_recall: Optional[float], recall_confidence: float,
                          max_false_alarms: float = MAX_FALSE_ALARMS) -> None:
    """The operating-point settings of `evaluate` (``target_recall`` None: not asked for); `train` declares the same
    ranges on its fields."""
    if target_recall is not None:
        checked("--target-recall", target_recall, RECALL)
    checked("--recall-confidence", recall_confidence, CONFIDENCE)
    checked("--max-false-alarms", max_false_alarms, RECALL)
