"""Metrics against brute-force definitions."""

import itertools

import numpy as np
import pytest

from cracknet.measure.intervals import bootstrap_intervals, evaluation, paired_difference, resamples
from cracknet.measure.metrics import average_precision, binary_metrics, curve_points, roc_auc
from cracknet.measure.thresholds import operating_point, operating_point_caveat, recall_lower_bound


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


def _scores(seed: int, n: int = 300):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.4
    probs = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1).round(2)  # rounded: many ties
    return probs, labels


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("target", [0.5, 0.9, 0.98, 1.0])
def test_plain_operating_point_is_the_highest_threshold_reaching_the_target(seed, target):
    probs, labels = _scores(seed)
    point = operating_point(probs, labels, target, confidence=0.0, max_false_alarms=1.0)
    threshold = point["threshold"]
    chosen = binary_metrics(probs, labels, threshold)
    assert chosen["recall"] >= target and point["recall"] == pytest.approx(chosen["recall"])
    # No higher threshold keeps the target: every distinct score above the cut, used as the cut, loses it.
    for higher in np.unique(probs[probs > threshold]):
        assert binary_metrics(probs, labels, higher + 1e-12)["recall"] < target


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("target", [0.5, 0.9, 0.95])
def test_backed_operating_point_is_the_highest_threshold_whose_lower_bound_reaches_the_target(seed, target):
    probs, labels = _scores(seed, n=1000)
    point = operating_point(probs, labels, target, confidence=0.95, max_false_alarms=1.0)
    positives = int(labels.sum())

    def bound(threshold):
        found = int(((probs >= threshold) & labels).sum())
        return recall_lower_bound(found, positives, 0.95)

    assert point["backed"] and bound(point["threshold"]) >= target
    assert binary_metrics(probs, labels, point["threshold"])["recall"] >= target
    assert point["threshold"] <= operating_point(probs, labels, target, confidence=0.0, max_false_alarms=1.0)["threshold"]
    for higher in np.unique(probs[probs > point["threshold"]]):
        assert bound(higher + 1e-12) < target


def test_too_few_positives_estimate_the_threshold_and_say_so():
    probs = np.r_[np.linspace(0.6, 0.99, 40), np.linspace(0.01, 0.7, 60)]
    labels = np.r_[np.ones(40, bool), np.zeros(60, bool)]
    point = operating_point(probs, labels, 0.98, confidence=0.95, max_false_alarms=1.0)
    # 40 of 40 found only shows recall >= 0.05 ** (1 / 40) = 0.928 with 95% confidence.
    assert not point["backed"] and point["recall"] == 1.0
    assert point["recall_lower_bound"] == pytest.approx(0.05 ** (1 / 40))
    # The 2% quantile of a logit-normal fitted by median and MAD lies below the lowest crack (0.6).
    assert 0.3 < point["threshold"] < 0.45
    caveat = operating_point_caveat(point)
    assert "Only 40 crack images in the validation split" in caveat and "0 of them score below it" in caveat
    assert operating_point_caveat(operating_point(probs, labels, 0.9, confidence=0.95, max_false_alarms=1.0)) == ""


def test_one_stray_crack_does_not_drag_the_threshold_to_zero():
    rng = np.random.default_rng(0)
    positives = 1 / (1 + np.exp(-rng.normal(3, 1, 20)))
    positives[0] = 0.004  # a mislabelled or very hard crack
    negatives = 1 / (1 + np.exp(-rng.normal(-3, 1, 60)))
    probs, labels = np.r_[positives, negatives], np.r_[np.ones(20, bool), np.zeros(60, bool)]
    point = operating_point(probs, labels, 0.98, confidence=0.95)
    # Keeping every crack would cut at 0.002 and flag every crack-free image.
    assert point["threshold"] > 0.3 and point["recall"] == 0.95
    assert binary_metrics(probs, labels, point["threshold"])["fp"] <= 3
    assert "1 of them score below it" in operating_point_caveat(point)


def test_small_noisy_validation_sets_keep_recall_without_flagging_everything():
    """Validation sets of 20 cracks drawn from known score distributions, half with one crack that scores like a
    crack-free image (a labelling slip); thresholds judged on the populations they were drawn from."""
    rng = np.random.default_rng(3)
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    crack_population, clean_population = sigmoid(rng.normal(2.5, 1.5, 100_000)), sigmoid(rng.normal(-2.5, 1.5, 100_000))
    recall, false_alarms = {False: [], True: []}, {False: [], True: []}
    for draw in range(200):
        noisy = bool(draw % 2)
        positives, negatives = sigmoid(rng.normal(2.5, 1.5, 20)), sigmoid(rng.normal(-2.5, 1.5, 60))
        if noisy:
            positives[0] = sigmoid(rng.normal(-2.5, 1.5))
        probs, labels = np.r_[positives, negatives], np.r_[np.ones(20, bool), np.zeros(60, bool)]
        threshold = operating_point(probs, labels, 0.98, confidence=0.95)["threshold"]
        recall[noisy].append((crack_population >= threshold).mean())
        false_alarms[noisy].append((clean_population >= threshold).mean())
    for noisy in (False, True):
        assert np.mean(recall[noisy]) >= 0.95
        # Keeping every validation crack flags about 55% of crack-free images in the median noisy draw.
        assert np.median(false_alarms[noisy]) <= 0.25


@pytest.mark.parametrize("seed", range(20))
def test_the_threshold_never_flags_more_than_the_false_alarm_bound_on_validation(seed):
    """The invariant, on sets large and small, well and badly separated: at most ``max_false_alarms`` of the
    negatives score at or above the threshold; where that bound does not bind, the recall rule alone decides."""
    rng = np.random.default_rng(seed)
    n_pos, n_neg = int(rng.integers(5, 400)), int(rng.integers(5, 400))
    gap = rng.uniform(0.0, 5.0)
    probs = 1 / (1 + np.exp(-np.r_[rng.normal(gap / 2, 1.5, n_pos), rng.normal(-gap / 2, 1.5, n_neg)]))
    probs = probs.round(int(rng.integers(2, 6)))  # ties
    labels = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    for bound in (0.02, 0.1, 0.3):
        point = operating_point(probs, labels, 0.98, 0.95, max_false_alarms=bound)
        flagged = int((probs[~labels] >= point["threshold"]).sum())
        assert flagged <= bound * n_neg + 1e-9 and point["false_alarms"] == flagged / n_neg
        unbounded = operating_point(probs, labels, 0.98, 0.95, max_false_alarms=1.0)["threshold"]
        if point["limited_by"] == "recall_target":
            assert point["threshold"] == unbounded
        else:  # the lowest cut that keeps the bound: one distinct score lower flags too many
            assert point["threshold"] > unbounded
            lower = probs[probs < point["threshold"]]
            assert len(lower) and (probs[~labels] >= lower.max()).sum() > bound * n_neg


def test_small_overlapping_validation_sets_no_longer_collapse_to_flagging_everything():
    """Validation sets the size of an adaptation's (30 cracks, 60 clean images) whose scores overlap like a model
    meeting a new surface (ROC-AUC about 0.83), two of the cracks mislabelled: the recall rule alone lands at a few
    hundredths and flags most clean images; bounded, it flags about a tenth and still finds most cracks."""
    rng = np.random.default_rng(1)
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    cracks, clean = sigmoid(rng.normal(1.5, 2.0, 100_000)), sigmoid(rng.normal(-1.5, 2.0, 100_000))
    unbounded, bounded = [], []
    for _ in range(60):
        positives, negatives = sigmoid(rng.normal(1.5, 2.0, 30)), sigmoid(rng.normal(-1.5, 2.0, 60))
        positives[:2] = sigmoid(rng.normal(-1.5, 2.0, 2))  # labelled crack, look clean
        probs, labels = np.r_[positives, negatives], np.r_[np.ones(30, bool), np.zeros(60, bool)]
        assert 0.65 < roc_auc(probs, labels) < 0.97
        unbounded.append(operating_point(probs, labels, 0.98, 0.95, max_false_alarms=1.0)["threshold"])
        point = operating_point(probs, labels, 0.98, 0.95)
        assert point["false_alarms"] <= 0.1 and not point["backed"]
        bounded.append(point)
    false_alarms = lambda t: float((clean >= t).mean())  # noqa: E731
    recall = lambda t: float((cracks >= t).mean())  # noqa: E731
    assert np.median(unbounded) < 0.1 and np.median([false_alarms(t) for t in unbounded]) > 0.7
    thresholds = [p["threshold"] for p in bounded]
    assert np.median([false_alarms(t) for t in thresholds]) < 0.15
    assert np.median([recall(t) for t in thresholds]) > 0.5
    accuracy = [(recall(t) + 1 - false_alarms(t)) / 2 for t in thresholds]
    assert np.median(accuracy) > 0.7 > np.median([(recall(t) + 1 - false_alarms(t)) / 2 for t in unbounded])
    limited = next(p for p in bounded if p["limited_by"] == "false_alarms")
    caveat = operating_point_caveat(limited)
    assert "flags at most 10% of them (--max-false-alarms)" in caveat and "Only 30 crack images" in caveat


def test_clopper_pearson_lower_bound_matches_known_values():
    # Textbook one-sided 95% bounds (the lower ends of two-sided 90% Clopper-Pearson intervals).
    assert recall_lower_bound(9, 10, 0.95) == pytest.approx(0.6058, abs=1e-4)
    assert recall_lower_bound(5, 10, 0.95) == pytest.approx(0.2224, abs=1e-4)
    assert recall_lower_bound(250, 250, 0.95) == pytest.approx(0.05 ** (1 / 250))
    assert recall_lower_bound(0, 30, 0.95) == 0.0
    assert recall_lower_bound(245, 250, 0.0) == 0.98
    bounds = [recall_lower_bound(k, 300, 0.95) for k in range(0, 301, 10)]
    assert bounds == sorted(bounds) and all(b <= k / 300 for b, k in zip(bounds, range(0, 301, 10)))


def test_backed_threshold_keeps_the_target_recall_on_new_images_far_more_often():
    """Threshold chosen on 300-positive validation draws from a known score distribution, judged on the population.

    The plain rule sits on the edge of the validation positives, so new images fall short of the target about
    half the time; the 95% bound should fall short at most about 5% of the time.
    """
    rng = np.random.default_rng(7)
    population = 1 / (1 + np.exp(-rng.normal(2.5, 1.5, 200_000)))  # crack scores

    def true_recall(threshold):
        return float((population >= threshold).mean())

    held = {0.0: 0, 0.95: 0}
    draws = 200
    for _ in range(draws):
        pos = 1 / (1 + np.exp(-rng.normal(2.5, 1.5, 300)))
        neg = 1 / (1 + np.exp(-rng.normal(-2.5, 1.5, 300)))
        probs, labels = np.r_[pos, neg], np.r_[np.ones(300, bool), np.zeros(300, bool)]
        for confidence in held:
            held[confidence] += true_recall(operating_point(probs, labels, 0.98, confidence, 1.0)["threshold"]) >= 0.98
    assert held[0.95] / draws >= 0.9
    assert held[0.0] / draws <= 0.8


@pytest.mark.parametrize("seed", range(3))
def test_curve_points_are_the_metrics_at_each_distinct_score(seed):
    probs, labels = _scores(seed, n=80)
    fpr, recall, precision, thresholds = curve_points(probs, labels)
    assert list(thresholds) == sorted(set(probs), reverse=True)
    for f, r, p, t in zip(fpr, recall, precision, thresholds):
        m = binary_metrics(probs, labels, t)
        assert (r, p, f) == pytest.approx((m["recall"], m["precision"], m["fp"] / (m["fp"] + m["tn"])))


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


def tiles_of_photos(rng, photos: int, tiles: int, mean: float = 0.8):
    """Crack tiles of ``photos`` photos whose tiles are found together: each photo has its own chance of its tiles
    being found (a Beta around ``mean``), as a model meeting photos of new light and texture does."""
    chance = rng.beta(5 * mean, 5 * (1 - mean), photos)
    found = np.concatenate([rng.random(tiles) < p for p in chance])
    groups = np.repeat([f"photo{i}" for i in range(photos)], tiles)
    return np.where(found, 0.9, 0.1), np.ones(photos * tiles, bool), groups


def test_photo_intervals_cover_what_other_photos_show_where_tile_intervals_do_not():
    """Known truth: recall 0.8 over photos. Tiles of one photo rise and fall together, so resampling tiles gives
    intervals that miss the truth about half the time; resampling whole photos covers it."""
    rng = np.random.default_rng(7)
    trials, covered_tiles, covered_photos = 100, 0, 0
    for trial in range(trials):
        probs, labels, groups = tiles_of_photos(rng, photos=12, tiles=30)
        by_tile = bootstrap_intervals(probs, labels, 0.5, n=300, seed=trial)["recall"]
        by_photo = bootstrap_intervals(probs, labels, 0.5, n=300, seed=trial, groups=groups)["recall"]
        covered_tiles += by_tile[0] <= 0.8 <= by_tile[1]
        covered_photos += by_photo[0] <= 0.8 <= by_photo[1]
    assert covered_photos >= 0.85 * trials
    assert covered_tiles <= covered_photos - 0.25 * trials


def test_group_resamples_take_whole_groups_and_evaluation_says_how_many():
    groups = ["a"] * 3 + ["b"] * 5 + ["c"] * 2
    for pick in resamples(10, groups, 50, seed=1):
        drawn = [groups[i] for i in pick]
        assert all(drawn.count(g) % {"a": 3, "b": 5, "c": 2}[g] == 0 for g in set(drawn))
    assert len(list(resamples(10, None, 3, seed=1))) == 3
    with pytest.raises(ValueError, match="names 9 items for 10"):
        next(resamples(10, groups[:9], 1, seed=0))

    probs, labels, names = tiles_of_photos(np.random.default_rng(0), photos=6, tiles=14)
    few = evaluation(probs, labels, 0.5, groups=names)
    assert few["interval_unit"] == "group" and few["groups"] == 6 and "only 6 groups" in few["interval_caveat"]
    plain = evaluation(probs, labels, 0.5)
    assert plain["interval_unit"] == "image" and plain["groups"] is None and "interval_caveat" not in plain
    wide, narrow = few["intervals_95"]["recall"], plain["intervals_95"]["recall"]
    assert wide[1] - wide[0] > narrow[1] - narrow[0]
    many = evaluation(*tiles_of_photos(np.random.default_rng(0), photos=12, tiles=3)[:2], 0.5,
                      groups=np.repeat([f"p{i}" for i in range(12)], 3))
    assert many["groups"] == 12 and "interval_caveat" not in many


def test_paired_difference_by_group_is_wider_where_photos_vary():
    rng = np.random.default_rng(3)
    probs, labels, groups = tiles_of_photos(rng, photos=8, tiles=20)
    # The champion differs on half the tiles of a few photos: where two models differ is a matter of photos too.
    differs = np.isin(groups, ["photo1", "photo4", "photo6"]) & (rng.random(len(probs)) < 0.5)
    other = np.where(differs, 1 - probs, probs)
    by_tile = paired_difference(probs, other, labels, 0.5, 0.5, n=300)["recall"]["interval"]
    by_photo = paired_difference(probs, other, labels, 0.5, 0.5, n=300, groups=groups)["recall"]["interval"]
    assert by_photo[1] - by_photo[0] > by_tile[1] - by_tile[0]


def test_mask_metrics_count_a_prediction_within_the_tolerance_and_find_the_best_threshold():
    from cracknet.measure.metrics import mask_metrics

    truth = np.zeros((40, 60), bool)
    truth[20:22, 5:55] = True  # a 2 px crack
    shifted = np.zeros((40, 60), np.float32)
    shifted[22:24, 5:55] = 0.7  # the same crack drawn 2 px lower: right within 2 px, wrong pixel for pixel
    m = mask_metrics([(shifted, truth)])
    assert m["precision"] == 1.0 and m["recall"] == 1.0 and m["f1"] == 1.0 and m["iou"] == 0.0
    strict = mask_metrics([(shifted, truth)], tolerance=1)
    assert strict["precision"] == 0.5 and strict["recall"] == 0.5  # one row of two is within 1 px

    noisy = truth * 0.6 + (np.indices(truth.shape).sum(0) % 7 == 0) * 0.3  # speckle below 0.5, crack above
    m = mask_metrics([(noisy, truth)], threshold=0.2)
    assert m["precision"] < 0.5 and m["recall"] == 1.0
    assert m["ods_f1"] == 1.0 and 0.3 < m["ods_threshold"] <= 0.6
    clean = mask_metrics([(np.zeros((8, 8)), np.zeros((8, 8), bool))])
    assert clean["f1"] == 1.0 and clean["iou"] == 1.0 and clean["crack_pixels"] == 0
    missed = mask_metrics([(np.zeros((40, 60)), truth)])
    assert missed["recall"] == 0.0 and missed["f1"] == 0.0
    with pytest.raises(ValueError, match="cannot be scored"):
        mask_metrics([(np.zeros((8, 8)), np.zeros((9, 8), bool))])
