"""The report's section on reviews: the model measured in the field by each imported review, over time
(``cracknet.review``: the records kept beside the runs table, ``<results>/_reviews/``)."""

from __future__ import annotations

import json

from cracknet import storage
from cracknet.report.page import Report, note_html, table_html
from cracknet.review.loop import RECORDS


def reviews(results: str) -> list[dict]:
    """The imported reviews' records, oldest first."""
    folder = storage.join(results, RECORDS)
    if not storage.exists(folder):
        return []
    found = [json.loads(storage.read_bytes(uri)) for uri in storage.list_files(folder) if uri.endswith(".json")]
    return sorted(found, key=lambda r: str(r.get("imported_at")))


def reviews_section(report: Report, results: str) -> None:
    """One row per review: when, which model, how many verdicts, precision and recall in the field with their
    intervals, the masks' agreement, and the conflicts left out."""
    found = reviews(results)
    if not found:
        report.section("In the field", note_html("No review has been imported yet (cracknet review; "
                                                  "docs/review.md)."))
        return

    def shown(field: dict, name: str) -> str:
        value, interval = field["metrics"][name], field["intervals"][name]
        return "n/a" if value is None else f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"

    rows = [(str(r["imported_at"])[:16].replace("T", " "), r["review_id"], r["model_id"], r["field"]["reviewed"],
             f"{r['field']['random']} of {r['field']['reviewed']}", shown(r["field"], "precision"),
             shown(r["field"], "recall"),
             "" if not r["field"].get("masks") else f"{r['field']['masks']['f1']:.3f}", len(r.get("conflicts", [])))
            for r in found]
    report.section("In the field", "<p>Each review's verdicts, weighted by how each photo was selected, measure "
                   "the model on every current photo (docs/review.md); 95% intervals.</p>" + table_html(
                       rows, ("imported", "review", "model", "verdicts", "at random", "precision", "recall",
                              "mask F1", "conflicts")))
