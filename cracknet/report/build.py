"""A self-contained HTML report (every image embedded; opens offline) and the same figures as PNGs.

    cracknet report --model URI [--data URI [--split test]] [--results URI] --output DIR

- always: the model card and the training curves (loss and accuracy, train vs validation, per epoch);
- with ``--data`` (a labelled tree): confusion matrix, precision-recall and ROC curves with the chosen
  threshold marked, and a gallery of the most confident false positives and false negatives;
- with ``--results`` (a scoring output; ``--model`` may then be left out): the probability distribution,
  images and cracks per day and per structure, the most likely cracks, and tile crack maps drawn over large
  photos; the nights over time (images, crack rate, errors, alerts) with their drift figures, and the
  structures whose cracks grew since their previous survey, a photo of each survey side by side; where a model that
  draws masks scored them, crack geometry: the photos with the most crack length with each crack's centre
  line drawn by severity, the width distribution, and crack length per structure by severity; where photos state
  their position, a map of the survey and of each structure with its findings (drawn offline, no map tiles); and
  the model measured in the field by each imported review (``cracknet review``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from cracknet.config import REQUIRED, option
from cracknet.errors import CracknetError
from cracknet.report.page import Report
from cracknet.report.places import places_section
from cracknet.report.reviews import reviews_section
from cracknet.report.scoring import (changes_section, geometry_section, nights_section, require_results,
                                     scoring_section)
from cracknet.report.training import evaluation_section, model_card_section, training_section


@dataclass(frozen=True)
class ReportConfig:
    """``cracknet report``: one offline HTML page about a model, an evaluation set and scoring results."""
    output: str = option(REQUIRED, "folder for report.html and the PNGs (path or s3://)", aliases=("--out",))
    model: Optional[str] = option(None, "the model/ folder, the training output above it, or models:/...; may be "
                                        "left out with --results (a report of the nights alone)")
    data: Optional[str] = option(None, "a labelled tree to evaluate on: confusion matrix, curves, error gallery")
    split: str = option("all", "evaluate only this split of the model's own training run (by content hash)",
                        choices=("all", "val", "test"))
    results: Optional[str] = option(None, "a scoring output: distribution, per day and structure, top cracks, the "
                                          "nights over time with drift and alerts, structures that changed")


def build_report(model_uri: str | None, out: str, data: str | None = None, split: str = "all",
                 results: str | None = None, gallery: int = 8, top: int = 20, maps: int = 3) -> dict:
    """The report of a model (``model_uri``), of an evaluation set (``data``) and of scoring results
    (``results``: its nights, structure changes and crack geometry too); without a model, of the results alone."""
    from cracknet.predict.evaluate import predict_tree
    from cracknet.predict.scorer import Scorer

    if model_uri is None and not results:
        raise CracknetError("Name a model (--model), scoring results (--results), or both.")
    scorer = Scorer.load(model_uri) if model_uri else None
    card = scorer.card if scorer else None
    # Everything that can refuse the inputs runs before the first file is written.
    found = predict_tree(scorer, data, split=split) if data and scorer else None
    if data and not scorer:
        raise CracknetError("--data needs the --model to evaluate on it.")
    if results:
        require_results(results)
    report = Report(out, f"cracknet report: model {card['model_id']}" if card else
                    f"cracknet report: nights of {results}")
    if card:
        report.attempt("Model card", model_card_section, card)
        report.attempt("Training curves", training_section, card)
    if found is not None:
        report.attempt("Evaluation", evaluation_section, card, found, gallery)
    if results:
        if card:
            report.attempt("Scoring results", scoring_section, results, top, maps, card)
        report.attempt("Nights", nights_section, results)
        report.attempt("Structure changes", changes_section, results)
        report.attempt("Crack geometry", geometry_section, results)
        report.attempt("Where on the structure", places_section, results)
        report.attempt("In the field", reviews_section, results)
    return {"report": report.write(), "figures": report.files}
