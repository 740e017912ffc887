"""What a person should look at, and what their verdicts say about the model in the field, without bias.

The design has two parts, fixed before anyone labels anything:

- **Targeted** (probability 1): the images a reviewer's time is best spent on: the most uncertain (crack
  probability nearest the threshold), the most severe findings, and images from nights whose monitoring saw
  drift; taken in turn from each structure, so that one structure does not fill the budget.
- **Random** (the stated share of the budget): a stratified random sample of every other image, strata by
  structure, allocated in proportion to their sizes; an image of stratum h is drawn with probability
  n_h / N_h, and that probability is recorded with it.

Every image of the population is then either reviewed for sure or had a known chance of being drawn, so the
Horvitz-Thompson totals (each verdict weighted by 1 / its probability) are unbiased for the whole population:
true and false positives and negatives, hence precision and recall in the field. Uncertainty sampling alone
would overstate the errors (it picks the images the model gets wrong most often); the random part measures
everything it left out. An item selected but not reviewed is dropped from its random stratum (the stratum's
reviewed items stand for it, weight N_h / r_h); a targeted one left unreviewed is counted and reported.
Intervals resample the reviewed images within each random stratum (the targeted part is a census).

Deterministic: the same population, budget, share and seed give the same selection.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from cracknet.errors import CracknetError

REASONS = ("uncertain", "severe", "drift")
RANDOM = "random"


@dataclass(frozen=True)
class Design:
    budget: int             # images to review
    random_share: float     # of the budget drawn at random (0 < share <= 1)
    seed: int = 0


def order_key(seed: int, uri: str, purpose: str = RANDOM) -> str:
    """A stable pseudo-random order of images for a seed and a purpose (sha256 of the three). The random draw has
    an order of its own: were it the order that broke the targeted part's ties, the images left for it would be
    those late in its order, and the draw would no longer be uniform over them."""
    return hashlib.sha256(f"{seed}\n{purpose}\n{uri}".encode()).hexdigest()


def select(population: list[dict], design: Design, threshold: float) -> list[dict]:
    """The images to review from ``population`` (dicts with image_uri, structure, crack_probability, and optional
    severity_rank (higher: worse; None: no finding) and drifted (bool)), each with its ``reason`` (uncertain,
    severe, drift or random), ``inclusion_probability`` and ``stratum`` (the structure for random picks)."""
    if design.budget < 1:
        raise CracknetError("--budget must be at least 1 image.")
    if not 0 < design.random_share <= 1:
        raise CracknetError(f"--random-share must be more than 0 and at most 1, not {design.random_share}.")
    if not population:
        raise CracknetError("There is nothing to review: no current image was scored without error.")
    budget = min(design.budget, len(population))
    n_random = max(1, int(round(budget * design.random_share)))
    targeted = _targeted(population, budget - n_random, threshold, design.seed)
    chosen = {p["image_uri"] for p in targeted}
    rest = [p for p in population if p["image_uri"] not in chosen]
    return targeted + _stratified(rest, budget - len(targeted), design.seed)


def _targeted(population: list[dict], n: int, threshold: float, seed: int) -> list[dict]:
    """Up to ``n`` images for the reasons in turn (uncertain, severe, drift), each reason's list taken round-robin
    over structures; a reason with fewer candidates leaves its places to the others."""
    if n <= 0:
        return []
    queues = {
        "uncertain": sorted(population, key=lambda p: (abs(p["crack_probability"] - threshold),
                                                      order_key(seed, p["image_uri"], "targeted"))),
        "severe": sorted((p for p in population if p.get("severity_rank") is not None),
                         key=lambda p: (-p["severity_rank"], -(p.get("length_mm") or 0.0),
                                        order_key(seed, p["image_uri"], "targeted"))),
        "drift": sorted((p for p in population if p.get("drifted")),
                        key=lambda p: order_key(seed, p["image_uri"], "targeted")),
    }
    turns = {reason: _round_robin(queue) for reason, queue in queues.items()}
    picked: dict[str, dict] = {}
    while len(picked) < n and turns:
        for reason in list(turns):
            item = next((p for p in turns[reason] if p["image_uri"] not in picked), None)
            if item is None:
                del turns[reason]
                continue
            picked[item["image_uri"]] = {**item, "reason": reason, "inclusion_probability": 1.0, "stratum": None}
            if len(picked) == n:
                break
    return list(picked.values())


def _round_robin(items: list[dict]):
    """``items`` (already in order of priority) taken one structure at a time, structures in order of their best."""
    by_structure: dict[str, list[dict]] = defaultdict(list)
    for item in items:
        by_structure[item["structure"]].append(item)
    lists = list(by_structure.values())
    for depth in range(max((len(x) for x in lists), default=0)):
        for queue in lists:
            if depth < len(queue):
                yield queue[depth]


def _stratified(rest: list[dict], n: int, seed: int) -> list[dict]:
    """A stratified random sample of ``n`` of ``rest`` (strata: structures, proportional allocation by largest
    remainder, at least one from each stratum while places last), each with its inclusion probability."""
    strata: dict[str, list[dict]] = defaultdict(list)
    for item in rest:
        strata[item["structure"]].append(item)
    n = min(n, len(rest))
    if n <= 0:
        return []
    sizes = {h: len(items) for h, items in sorted(strata.items())}
    exact = {h: n * size / len(rest) for h, size in sizes.items()}
    take = {h: int(v) for h, v in exact.items()}
    for h in sorted(exact, key=lambda h: (-(exact[h] - take[h]), h))[: n - sum(take.values())]:
        take[h] += 1
    picked = []
    for h, items in sorted(strata.items()):
        drawn = sorted(items, key=lambda p: order_key(seed, p["image_uri"]))[: take[h]]
        picked += [{**p, "reason": RANDOM, "inclusion_probability": take[h] / sizes[h], "stratum": h,
                    "stratum_size": sizes[h]} for p in drawn]
    return picked


# ---------------------------------------------------------------------------------------------------
# The field estimate


def field_estimate(reviewed: list[dict], resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Precision, recall, accuracy and the crack rate of the population, with percentile intervals, from
    ``reviewed`` items (a selection's dicts with ``is_crack``, the model's verdict, and ``truth``, the
    reviewer's: True, False, or None for not reviewed). See the module docstring."""
    done = [r for r in reviewed if r.get("truth") is not None]
    targeted = [r for r in done if r["reason"] != RANDOM]
    strata: dict[str, list[dict]] = defaultdict(list)
    sizes: dict[str, int] = {}
    for r in done:
        if r["reason"] == RANDOM:
            strata[r["stratum"]].append(r)
            sizes[r["stratum"]] = int(r["stratum_size"])
    unreviewed = sum(1 for r in reviewed if r.get("truth") is None and r["reason"] != RANDOM)
    point = _rates(_totals(targeted, strata, sizes))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        again = {h: [items[i] for i in rng.integers(0, len(items), len(items))] for h, items in strata.items()}
        draws.append(_rates(_totals(targeted, again, sizes)))
    tail = (1 - level) / 2
    intervals = {}
    for name in point:
        values = np.array([d[name] for d in draws if d[name] is not None], dtype=float)
        intervals[name] = (None if point[name] is None or not len(values) else
                           [float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))])
    return {"metrics": point, "intervals": intervals, "level": level, "reviewed": len(done),
            "targeted": len(targeted), "random": sum(len(v) for v in strata.values()),
            "population": len(targeted) + sum(sizes.values()), "targeted_unreviewed": unreviewed}


def _totals(targeted: list[dict], strata: dict, sizes: dict) -> dict:
    """Horvitz-Thompson totals of true/false positives/negatives: the targeted items as themselves, each random
    stratum's reviewed items standing for its N_h images."""
    totals = dict.fromkeys(("tp", "fp", "fn", "tn"), 0.0)
    for weight, items in [(1.0, targeted)] + [(sizes[h] / len(items), items) for h, items in strata.items() if items]:
        for r in items:
            key = ("t" if bool(r["is_crack"]) == bool(r["truth"]) else "f") + ("p" if r["is_crack"] else "n")
            totals[key] += weight
    return totals


def _rates(t: dict) -> dict:
    def ratio(a: float, b: float) -> float | None:
        return a / b if b > 0 else None

    total = sum(t.values())
    return {"precision": ratio(t["tp"], t["tp"] + t["fp"]), "recall": ratio(t["tp"], t["tp"] + t["fn"]),
            "accuracy": ratio(t["tp"] + t["tn"], total), "crack_rate": ratio(t["tp"] + t["fn"], total)}
