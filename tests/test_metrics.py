"""Metrics against brute-force definitions."""

import itertools

import numpy as np
import pytest

from cracknet.metrics import binary_metrics, choose_threshold, roc_auc


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
def test_chosen_threshold_reaches_the_best_f1(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 80)
    probs = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1)
    best = max(binary_metrics(probs, labels, t)["f1"] for t in np.concatenate([probs, [0.5]]))
    assert binary_metrics(probs, labels, choose_threshold(probs, labels))["f1"] == pytest.approx(best)


def test_threshold_sits_between_separated_classes():
    probs = np.array([0.01, 0.02, 0.03, 0.97, 0.98])
    t = choose_threshold(probs, np.array([0, 0, 0, 1, 1]))
    assert 0.03 < t < 0.97 and t == pytest.approx(0.5)
