"""How sure a figure is: bootstrap intervals over whole groups (photos, structures), and paired differences.

    evaluation(probs, labels, threshold, groups=photo_of_each_crop)

Resampling tiles of the same photo as if they were independent overstates certainty; every interval here
resamples the groups it is given.
"""

from __future__ import annotations

import numpy as np

from cracknet.measure.metrics import GATE_METRICS, average_precision, binary_metrics

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
