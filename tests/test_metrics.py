"""Metrics against brute-force definitions."""

import itertools

import numpy as np
import pytest

from cracknet.metrics import (average_precision, binary_metrics, bootstrap_intervals, roc_auc,
                              threshold_for_recall)


def brute_auc(probs, labels):
    pos = [p for p, y in zip(probs, labels) if y]
    neg = [p for p, y in zip(probs, labels) if not y]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    probs = np.round(rng.random(60) * 0.5 + labels * 0.3, 1)  # rounding forces ties
    assert roc_auc(probs, labels) == pytest.approx(brute_auc(probs, labels))


def test_roc_auc_is_nan_with_one_class():
    assert np.isnan(roc_auc(np.array([0.2, 0.9]), np.array([1, 1])))


def test_binary_metrics_counts():
    m = binary_metrics(np.array([0.9, 0.8, 0.4, 0.3, 0.6]), np.array([1, 0, 1, 0, 0]), threshold=0.5)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 2, 1, 1)
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.4) and m["accuracy"] == pytest.approx(0.4)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("target", [0.5, 0.9, 0.98, 1.0])
def test_threshold_for_recall_reaches_the_target_with_the_best_precision(seed, target):
    rng = np.random.default_rng(seed)
    labels = rng.random(300) < 0.4
    probs = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1).round(2)  # rounded: many ties
    threshold = threshold_for_recall(probs, labels, target)
    chosen = binary_metrics(probs, labels, threshold)
    assert chosen["recall"] >= target
    # No higher threshold keeps the target: every distinct score above the cut, used as the cut, loses it.
    for higher in np.unique(probs[probs > threshold]):
        assert binary_metrics(probs, labels, higher + 1e-12)["recall"] < target


def test_average_precision_matches_the_step_definition():
    probs = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    labels = np.array([1, 0, 1, 1, 0, 0], dtype=bool)
    # Precision at each positive: 1/1, 2/3, 3/4; averaged over the 3 positives.
    assert average_precision(probs, labels) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert average_precision(np.array([0.5, 0.5]), np.array([1, 0], dtype=bool)) == pytest.approx(0.5)


def test_bootstrap_intervals_contain_the_point_estimate_and_narrow_with_more_data():
    rng = np.random.default_rng(0)

    def width(n):
        labels = rng.random(n) < 0.5
        probs = np.clip(rng.normal(0.3 + 0.4 * labels, 0.2), 0, 1)
        point = binary_metrics(probs, labels, 0.5)
        ci = bootstrap_intervals(probs, labels, 0.5, n=300)
        for name in ("accuracy", "recall", "roc_auc"):
            assert ci[name][0] <= point[name] <= ci[name][1]
        return ci["accuracy"][1] - ci["accuracy"][0]

    assert width(2000) < width(100)
