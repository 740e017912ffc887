"""Monitoring's rules on their own: the PSI, the crack-rate and error rules against recent nights, a structure
change judged on rates, and alert lines a terminal can show safely."""

import numpy as np

from cracknet.measure import metrics
from cracknet.score import monitor
from cracknet.table.query import run_query


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(0)
    edges = monitor.BRIGHTNESS_EDGES
    base = metrics.histogram(rng.normal(160, 12, 5000), edges)
    same = metrics.histogram(rng.normal(160, 12, 300), edges)
    dark = metrics.histogram(rng.normal(100, 12, 300), edges)
    assert monitor.psi(base, same) < 0.1 < 0.25 < monitor.psi(base, dark)


def test_the_crack_rate_and_error_rules_judge_against_recent_nights():
    quiet = {"images": 1000, "errors": 5, "errors_by_kind": {"permanent": 5, "transient": 0}, "error_rate": 0.005,
             "cracks": 40, "crack_rate": 40 / 995, "probability_histogram": [900, 95] + [0] * 18,
             "brightness_histogram": [0] * 10 + [995] + [0] * 5, "sharpness_histogram": [0] * 8 + [995] + [0],
             "structures": []}
    recent = [quiet, {**quiet, "cracks": 50, "crack_rate": 50 / 995}]
    alerts, drift = monitor.judge(quiet, recent, {}, monitor.Rules())
    assert alerts == [] and sorted(drift) == ["brightness_psi", "probability_psi", "sharpness_psi"]
    assert max(drift.values()) < 0.01
    storm = {**quiet, "errors": 120, "error_rate": 0.12, "errors_by_kind": {"permanent": 20, "transient": 100},
             "cracks": 300, "crack_rate": 300 / 880}
    alerts, _ = monitor.judge(storm, recent, {}, monitor.Rules())
    assert [a["rule"] for a in alerts] == ["error_rate", "crack_rate"]
    assert "transient 100" in alerts[0]["message"] and "outside recent nights' 4.0%-5.0%" in alerts[1]["message"]
    small = {**storm, "images": 10, "errors": 0, "error_rate": 0.0, "cracks": 9, "crack_rate": 0.9}
    assert monitor.judge(small, recent, {}, monitor.Rules())[0] == []  # too few images to judge a distribution


def test_a_structure_change_is_a_change_in_its_rates_never_more_photos_or_a_new_model(tmp_path):
    from datetime import datetime, timedelta, timezone

    from helpers import commit_run

    output = str(tmp_path / "results")
    day = datetime(2026, 11, 2, 1, tzinfo=timezone.utc)
    bridge = "s3://survey/bridge"

    def night(n: int, names: list[str], cracked: int, model: str = "model-a", versions=None) -> dict:
        commit_run(output, [f"{bridge}/{name}" for name in names], model_id=model, run_id=f"run-{n}",
                   when=day + timedelta(days=n), versions=versions,
                   probabilities=[0.9] * cracked + [0.1] * (len(names) - cracked))
        changes = monitor.survey_changes(output, f"run-{n}")
        return {name: monitor.structure_changed(c, monitor.Rules()) for name, c in changes.items()}

    assert night(1, [f"a{i}.jpg" for i in range(10)], cracked=2) == {}  # a first survey: nothing to compare
    # More photos with the same share cracked (a survey split over two nights, or copies): 2 -> 4 cracked, no change.
    assert night(2, [f"b{i}.jpg" for i in range(10)], cracked=2) == {bridge: False}
    # Another model scores the same photos again: a rescoring, not a survey.
    assert night(3, [f"{p}{i}.jpg" for p in "ab" for i in range(10)], cracked=20, model="model-b") == {}
    # A survey where most new photos are cracked: the structure's rate rose beyond its noise.
    assert night(4, [f"c{i}.jpg" for i in range(20)], cracked=20) == {bridge: True}
    (row,) = run_query(output, "SELECT * FROM structure_changes").to_pylist()
    assert (row["previous_run_id"], row["run_id"], row["previous_cracks"], row["previous_images"], row["cracks"],
            row["images"]) == ("run-2", "run-4", 4, 20, 24, 40)  # judged by model-a both times
    alerts, _ = monitor.judge({"images": 20, "errors": 0, "error_rate": 0.0, "cracks": 20, "crack_rate": 1.0,
                               "structures": []}, [], monitor.survey_changes(output, "run-4"), monitor.Rules())
    assert [a["message"] for a in alerts] == [f"{bridge}: 4 of 20 photos cracked -> 24 of 40 (20% -> 60%) since "
                                              "the survey of run run-2."]


def test_alert_lines_show_no_terminal_escapes_from_folder_names():
    from cracknet.console import alert_lines

    summary = {"alerts": [{"rule": "structure_change", "message": "s3://b/\x1b]0;owned\x07\x1b[2Jbridge: 1 -> 3"}],
               "alert_delivery": "not delivered to https://hooks.example.com (HTTP 500)"}
    lines = alert_lines(summary)
    assert all("\x1b" not in line and "\x07" not in line for line in lines)
    assert lines[1] == "  structure_change: s3://b/?]0;owned??[2Jbridge: 1 -> 3"
