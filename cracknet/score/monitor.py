"""Nightly runs that watch themselves: what each run records for monitoring, the rules that judge a night
against recent nights and the model, and the alerts they send.

    cracknet score ... --alert-webhook https://hooks.slack.com/services/...   # fired rules as one JSON POST
    cracknet query --results URI "SELECT run_id, alerts FROM runs"

Each scoring run's ``runs`` row carries ``monitoring`` (JSON): images, errors by
kind, crack rate, a histogram of crack probabilities, histograms of two image
statistics (brightness: mean luma 0-255; sharpness: variance of the Laplacian of
the grey image, on a log scale) and per-structure counts and crack lengths. The
rules (``Rules``; each a flag of ``cracknet score``):

- **probability drift**: the population-stability index (PSI) of tonight's
  probability histogram against the pooled histogram of recent nights (the last
  ``window`` scoring runs) is above ``psi`` (0.25: the usual "significant
  shift"). The PSI against the model's validation images is recorded and shown
  too, but not judged: a survey's share of cracks is not the validation set's;
- **image drift**: the same PSI for brightness and for sharpness against recent
  nights (dark, blurred or unfamiliar images show here first);
- **crack rate**: tonight's share of crack verdicts lies outside the range of
  recent nights, widened by the 99% binomial interval of tonight's count and
  ``rate_margin``;
- **error rate**: more than ``max_error_rate`` of tonight's images are error rows;
- **structure change**: a structure (an image folder) this run surveyed (it first
  scored some of its photos; a rescoring is no survey) changed from just before the
  run to after it, all its photos in force and judged by the run's model: at least
  ``min_growth`` more cracked photos and a crack rate above the 95% binomial
  interval of the rate before, or crack length per photo up by more than
  ``length_growth``. More photos of the same cracks never fire it.

A fired rule is one alert: written to the run's row, printed in the summary, and
posted to ``--alert-webhook`` (``{"text": ...}``, the shape Slack and Teams
incoming webhooks take, with the alerts under ``cracknet``), with a timeout and
retries that never fail the run.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np

from cracknet.measure.metrics import histogram, probability_histogram

BRIGHTNESS_EDGES = [float(x) for x in np.linspace(0, 256, 17)]
SHARPNESS_EDGES = [0.0] + [float(x) for x in np.logspace(0, 4, 9)] + [math.inf]  # variance of the Laplacian:
# bins of 10^0.5 (a blur that matters divides it by ten or more; a few more crack edges do not cross a bin)
PSEUDO_COUNT = 0.5  # added to every bin in the PSI: an empty bin stays finite, and a small night's noise small


# ---------------------------------------------------------------------------
# Per image (in the model actors)


def image_statistics(tiles) -> tuple[float, float]:
    """(brightness, sharpness) of one image from its model tiles (uint8 (T, S, S, 3), numpy or torch on any
    device): mean luma 0-255, and the variance of the Laplacian of the grey tiles (mean over tiles)."""
    import torch

    x = tiles if isinstance(tiles, torch.Tensor) else torch.from_numpy(np.array(tiles, copy=True))
    grey = (x[..., 0].float() * 0.299 + x[..., 1].float() * 0.587 + x[..., 2].float() * 0.114).unsqueeze(1)
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=grey.device).view(1, 1, 3, 3)
    laplacian = torch.nn.functional.conv2d(grey, kernel)
    return float(grey.mean()), float(laplacian.flatten(1).var(dim=1).mean())


# ---------------------------------------------------------------------------
# Per run (on the driver, from the committed rows)


RUN_SQL = """
SELECT count(*) AS images,
       count(*) FILTER (WHERE error IS NOT NULL) AS errors,
       count(*) FILTER (WHERE error IS NOT NULL AND error_kind = 'permanent') AS errors_permanent,
       count(*) FILTER (WHERE error IS NOT NULL AND coalesce(error_kind, '') <> 'permanent') AS errors_transient,
       count(*) FILTER (WHERE is_crack) AS cracks
FROM results WHERE run_id = $run
"""
STRUCTURES_SQL = """
SELECT structure, count(*) AS images,
       count(*) FILTER (WHERE is_crack) AS cracks, coalesce(sum(crack_length_mm), 0) AS crack_length_mm,
       coalesce(sum(crack_length_px), 0) AS crack_length_px, max(crack_width_max_mm) AS crack_width_max_mm
FROM located WHERE run_id = $run GROUP BY 1 ORDER BY 1
"""


def run_record(output: str, run_id: str) -> dict[str, Any]:
    """What a committed run holds, for monitoring: counts, rates, histograms and per-structure figures."""
    from cracknet.table import query

    con = query.connect(output)
    counts = con.sql(RUN_SQL, params={"run": run_id}).to_arrow_table().to_pylist()[0]
    values = con.sql("SELECT crack_probability, brightness, sharpness FROM results "
                     "WHERE run_id = $run AND error IS NULL", params={"run": run_id}).to_arrow_table()
    structures = con.sql(STRUCTURES_SQL, params={"run": run_id}).to_arrow_table().to_pylist()
    scored = counts["images"] - counts["errors"]
    return {
        "images": counts["images"], "errors": counts["errors"],
        "errors_by_kind": {"permanent": counts["errors_permanent"], "transient": counts["errors_transient"]},
        "error_rate": counts["errors"] / counts["images"] if counts["images"] else 0.0,
        "cracks": counts["cracks"], "crack_rate": counts["cracks"] / scored if scored else 0.0,
        "probability_histogram": probability_histogram(values.column("crack_probability").to_pylist()),
        "brightness_histogram": histogram(values.column("brightness").to_pylist(), BRIGHTNESS_EDGES),
        "sharpness_histogram": histogram(values.column("sharpness").to_pylist(), SHARPNESS_EDGES),
        "brightness_mean": _mean(values.column("brightness").to_pylist()),
        "sharpness_median": _median(values.column("sharpness").to_pylist()),
        "structures": structures,
    }


def _mean(values) -> float | None:
    v = [x for x in values if x is not None and x == x]
    return float(np.mean(v)) if v else None


def _median(values) -> float | None:
    v = [x for x in values if x is not None and x == x]
    return float(np.median(v)) if v else None


# ---------------------------------------------------------------------------
# The rules


@dataclasses.dataclass(frozen=True)
class Rules:
    """The monitoring rules' settings (see the module docstring); ``cracknet score`` has a flag for each."""
    window: int = 7
    psi: float = 0.25
    rate_margin: float = 0.05
    max_error_rate: float = 0.05
    min_growth: int = 2
    length_growth: float = 0.5
    min_images: int = 20  # nights with fewer scored images are too small to judge a distribution


def psi(expected: list[int], actual: list[int]) -> float:
    """Population-stability index of ``actual`` against ``expected`` (bin counts over the same edges)."""
    e, a = np.asarray(expected, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if e.sum() == 0 or a.sum() == 0:
        return 0.0
    e, a = (e + PSEUDO_COUNT) / (e.sum() + PSEUDO_COUNT * len(e)), (a + PSEUDO_COUNT) / (a.sum() + PSEUDO_COUNT * len(a))
    return float(np.sum((a - e) * np.log(a / e)))


def _pooled(records: list[dict], key: str) -> list[int] | None:
    hists = [r[key] for r in records if r.get(key) and sum(r[key])]
    return [int(x) for x in np.sum(hists, axis=0)] if hists else None


def binomial_interval(k: int, n: int, z: float = 2.576) -> tuple[float, float]:
    """Wilson interval of k successes in n (z 2.576: 99%)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def judge(tonight: dict, recent: list[dict], changes: dict[str, dict], rules: Rules,
          validation_histogram: list[int] | None = None) -> tuple[list[dict], dict]:
    """The alerts of tonight's record against recent nights' records (newest first), each structure's previous
    survey and the model's validation histogram; also the drift figures (PSI) measured."""
    alerts, drift = [], {}
    scored = tonight["images"] - tonight["errors"]
    big_enough = scored >= rules.min_images
    if tonight["images"] and tonight["error_rate"] > rules.max_error_rate:
        alerts.append(_alert("error_rate", f"{tonight['errors']} of {tonight['images']} images "
                                           f"({tonight['error_rate']:.1%}) are error rows (permanent "
                                           f"{tonight['errors_by_kind']['permanent']}, transient "
                                           f"{tonight['errors_by_kind']['transient']}); the rule allows "
                                           f"{rules.max_error_rate:.0%}.", tonight["error_rate"]))
    recent = [r for r in recent if r and r.get("images", 0) - r.get("errors", 0) >= rules.min_images][:rules.window]
    if big_enough and validation_histogram:  # shown, not judged: a survey's crack share is not validation's
        drift["probability_psi_validation"] = psi(validation_histogram, tonight["probability_histogram"])
    baseline = _pooled(recent, "probability_histogram")
    if big_enough and baseline:
        drift["probability_psi"] = psi(baseline, tonight["probability_histogram"])
        if drift["probability_psi"] > rules.psi:
            alerts.append(_alert("probability_drift", f"The crack probabilities moved from recent nights': PSI "
                                                      f"{drift['probability_psi']:.2f} (the rule allows "
                                                      f"{rules.psi:.2f}).", drift["probability_psi"]))
    for stat in ("brightness", "sharpness"):
        base = _pooled(recent, f"{stat}_histogram")
        if big_enough and base:
            drift[f"{stat}_psi"] = psi(base, tonight[f"{stat}_histogram"])
            if drift[f"{stat}_psi"] > rules.psi:
                alerts.append(_alert(f"{stat}_drift", f"The images' {stat} moved from recent nights': PSI "
                                                      f"{drift[f'{stat}_psi']:.2f} (the rule allows {rules.psi:.2f}); "
                                                      "a new camera, light or surface?", drift[f"{stat}_psi"]))
    rates = [r["crack_rate"] for r in recent]
    if big_enough and rates:
        low, high = binomial_interval(tonight["cracks"], scored)
        if high < min(rates) - rules.rate_margin or low > max(rates) + rules.rate_margin:
            alerts.append(_alert("crack_rate", f"Crack rate {tonight['crack_rate']:.1%} ({tonight['cracks']} of "
                                               f"{scored}) lies outside recent nights' {min(rates):.1%}-"
                                               f"{max(rates):.1%}.", tonight["crack_rate"]))
    for name, c in sorted(changes.items()):
        if c["previous_images"] and structure_changed(c, rules):
            per_before, per_after = (c["previous_crack_length_mm"] / c["previous_images"],
                                     c["crack_length_mm"] / c["images"])
            alerts.append(_alert(
                "structure_change",
                f"{name}: {c['previous_cracks']} of {c['previous_images']} photos cracked -> {c['cracks']} of "
                f"{c['images']} ({c['previous_crack_rate']:.0%} -> {c['crack_rate']:.0%})"
                + (f", crack length {per_before:.0f} -> {per_after:.0f} mm per photo" if per_after or per_before
                   else "") + f" since the survey of run {c['previous_run_id']}.",
                c["cracks_change"], structure=name, previous_run_id=c["previous_run_id"]))
    return alerts, drift


def _alert(rule: str, message: str, value: float, **extra) -> dict:
    return {"rule": rule, "message": message, "value": float(value), **extra}


def structure_changed(c: dict, rules: Rules) -> bool:
    """Whether a structure changed from just before a survey to after it (a row of the ``survey_changes`` view),
    judged on rates, so that more photos alone never count: at least ``min_growth`` more cracked photos *and* a
    crack rate above the 95% binomial interval of the rate before; or crack length per photo up by more than
    ``length_growth``."""
    _, high = binomial_interval(c["previous_cracks"], c["previous_images"], z=1.96)
    more = c["cracks_change"] >= rules.min_growth and c["crack_rate"] > high
    per_before = c["previous_crack_length_mm"] / c["previous_images"]
    per_after = c["crack_length_mm"] / c["images"] if c["images"] else 0.0
    return more or (per_after > per_before * (1 + rules.length_growth) and per_after > per_before)


def survey_changes(output: str, run_id: str) -> dict[str, dict]:
    """The structures ``run_id`` surveyed (first scored one of their photos), each before and after it as the run's
    model judged them (the ``survey_changes`` view); a structure surveyed for the first time is not there."""
    from cracknet.table import query

    rows = query.connect(output).sql("SELECT * FROM survey_changes WHERE run_id = $run",
                                       params={"run": run_id}).to_arrow_table().to_pylist()
    return {r["structure"]: r for r in rows}


def recent_records(runs_table, run_id: str, window: int) -> list[dict]:
    """The monitoring records of the scoring runs before ``run_id``, newest first (``window * 2`` at most, so that
    small nights left out still leave ``window``)."""
    rows = [r for r in runs_table.to_pylist() if r["job"] == "scoring" and r["run_id"] < run_id
            and r.get("monitoring")]
    rows.sort(key=lambda r: r["run_id"], reverse=True)
    return [json.loads(r["monitoring"]) for r in rows[:window * 2]]
