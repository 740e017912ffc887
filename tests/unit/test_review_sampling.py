"""Review selection and the field estimate: deterministic, spread over structures, and unbiased on a simulated
population whose truth is known (uncertainty sampling alone is not)."""

from __future__ import annotations

import numpy as np
import pytest

from cracknet.errors import CracknetError
from cracknet.review.sampling import RANDOM, Design, field_estimate, select


def population(n: int = 6000, seed: int = 0, structures: int = 6) -> list[dict]:
    """Images of known truth (12% cracked) and a model that is right most of the time, wrong near 0.5."""
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < 0.12
    logit = np.where(truth, 2.2, -2.2) + rng.normal(0, 1.6, n)
    p = 1 / (1 + np.exp(-logit))
    return [{"image_uri": f"s3://s/{k % structures}/{k}.jpg", "structure": f"s3://s/{k % structures}",
             "crack_probability": float(p[k]), "is_crack": bool(p[k] >= 0.5), "true": bool(truth[k]),
             "severity_rank": (2 if p[k] > 0.97 else 1) if p[k] >= 0.5 else None, "drifted": k % 50 == 0}
            for k in range(n)]


def truth_of(items: list[dict]) -> dict:
    tp = sum(i["is_crack"] and i["true"] for i in items)
    fp = sum(i["is_crack"] and not i["true"] for i in items)
    fn = sum(not i["is_crack"] and i["true"] for i in items)
    return {"precision": tp / (tp + fp), "recall": tp / (tp + fn)}


def reviewed(picks: list[dict]) -> list[dict]:
    return [{**p, "truth": p["true"]} for p in picks]


def test_selection_is_deterministic_spread_and_states_each_probability():
    pop = population()
    design = Design(budget=300, random_share=0.3, seed=7)
    picks = select(pop, design, threshold=0.5)
    assert sorted(p["image_uri"] for p in picks) == sorted(p["image_uri"] for p in select(pop[::-1], design, 0.5))
    assert len(picks) == 300 and len({p["image_uri"] for p in picks}) == 300
    assert sum(p["reason"] == RANDOM for p in picks) == 90
    reasons = {p["reason"] for p in picks}
    assert reasons == {"uncertain", "severe", "drift", RANDOM}
    for reason in ("uncertain", "severe"):  # spread: every structure gets its turn
        assert len({p["structure"] for p in picks if p["reason"] == reason}) == 6
    for p in picks:
        if p["reason"] == RANDOM:
            assert p["inclusion_probability"] == pytest.approx(15 / p["stratum_size"])  # 90 over 6 equal strata
        else:
            assert p["inclusion_probability"] == 1.0
    assert select(pop, Design(300, 0.3, seed=8), 0.5) != picks


def test_the_field_estimate_is_unbiased_where_uncertainty_sampling_alone_is_not():
    # 30 simulated surveys of known truth: the estimate's mean error is within 3 standard errors of 0 (no bias
    # to find), while precision on the uncertain picks alone is off by far more; the 95% intervals cover.
    errors, naive, covered = [], [], 0
    for seed in range(30):
        pop = population(n=3000, seed=seed)
        truth = truth_of(pop)
        picks = select(pop, Design(budget=300, random_share=0.5, seed=seed), threshold=0.5)
        found = field_estimate(reviewed(picks), resamples=200, seed=seed)
        assert found["population"] == len(pop) and found["reviewed"] == 300
        errors.append([found["metrics"]["precision"] - truth["precision"], found["metrics"]["recall"] - truth["recall"]])
        low, high = found["intervals"]["precision"]
        covered += low <= truth["precision"] <= high
        naive.append(truth_of(reviewed([p for p in picks if p["reason"] == "uncertain"]))["precision"]
                     - truth["precision"])
    errors = np.array(errors)
    standard_error = errors.std(axis=0, ddof=1) / np.sqrt(len(errors))
    assert np.all(np.abs(errors.mean(axis=0)) < 3 * standard_error), (errors.mean(axis=0), standard_error)
    assert np.mean(naive) < -0.15 and np.mean(naive) < -5 * standard_error[0]
    assert covered >= 25, covered  # of 30 nominal-95% intervals


def test_an_unreviewed_item_is_dropped_from_its_stratum_and_bad_designs_are_refused():
    pop = population(n=600)
    picks = reviewed(select(pop, Design(budget=60, random_share=0.5), threshold=0.5))
    first_random = next(i for i, p in enumerate(picks) if p["reason"] == RANDOM)
    picks[first_random]["truth"] = None
    picks[0]["truth"] = None  # a targeted item nobody reviewed
    found = field_estimate(picks, resamples=50)
    assert found["reviewed"] == 58 and found["targeted_unreviewed"] == 1 and found["population"] == 599
    with pytest.raises(CracknetError, match="--random-share"):
        select(pop, Design(budget=10, random_share=0.0), 0.5)
    with pytest.raises(CracknetError, match="nothing to review"):
        select([], Design(budget=10, random_share=0.5), 0.5)
