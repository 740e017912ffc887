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
  line drawn by severity, the width distribution, and crack length per structure by severity.
"""

from __future__ import annotations

import base64
import html
import io
import os
from typing import Any

import numpy as np
from PIL import Image

from cracknet import storage
from cracknet.errors import CracknetError
from cracknet.screen import first_line
from cracknet.metrics import average_precision, binary_metrics, curve_points, evaluation, operating_point_caveat

THUMB = 160
LIMITS = ("Trained and tested on the labelled images named in the card (concrete surface patches for the "
          "METU set); accuracy on other surfaces, materials, scales or cameras is unknown until measured with "
          "cracknet evaluate on labelled images of them. The threshold was chosen for recall on the "
          "validation split; precision at that threshold is the cost of that choice.")


class Html(str):
    """Markup made here (an image, a link): the one kind of text a table cell does not escape."""


def _plain(text: Any) -> str:
    """Text for a matplotlib label, drawn as written ("$" would otherwise start mathtext)."""
    return str(text).replace("$", r"\$")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class Report:
    """Collects sections and figures; writes DIR/report.html and DIR/<figure>.png."""

    def __init__(self, out: str, title: str):
        self.out, self.title = out, title
        self.sections: list[str] = []
        self.files: list[str] = []

    def figure(self, name: str, fig) -> str:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        _pyplot().close(fig)
        return self.png(name, buffer.getvalue())

    def png(self, name: str, data: bytes) -> str:
        uri = storage.join(self.out, f"{name}.png")
        storage.write_bytes(uri, data)
        self.files.append(uri)
        return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'

    def section(self, title: str, body: str) -> None:
        self.sections.append(f"<section><h2>{html.escape(title)}</h2>\n{body}\n</section>")

    def attempt(self, title: str, build, *args) -> None:
        """Add a section by ``build(self, *args)``; one that fails becomes a note, and the report still opens."""
        try:
            build(self, *args)
        except Exception as exc:  # noqa: BLE001 - one bad figure or row must not cost the whole report
            _pyplot().close("all")
            self.section(title, _note(f"This section could not be drawn: {_reason(exc)}"))

    def write(self) -> str:
        page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(self.title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
h1 {{ font-size: 1.6em; }} h2 {{ border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }}
table {{ border-collapse: collapse; margin: .5em 0; }} td, th {{ border: 1px solid #ddd; padding: .25em .6em;
text-align: left; font-size: .92em; }} img {{ max-width: 100%; }}
.gallery {{ display: flex; flex-wrap: wrap; gap: .6em; }} .gallery figure {{ margin: 0; width: {THUMB}px; }}
.gallery figcaption {{ font-size: .75em; word-break: break-all; }} .note {{ color: #555; font-size: .92em; }}
</style></head><body>
<h1>{html.escape(self.title)}</h1>
{"".join(self.sections)}
</body></html>
"""
        uri = storage.join(self.out, "report.html")
        storage.write_bytes(uri, page.encode())
        return uri


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...] | None = None) -> str:
    """An HTML table; every cell is escaped unless it is ``Html``."""
    head = "<tr>" + "".join(f"<th>{_cell(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _cell(value: Any) -> str:
    return value if isinstance(value, Html) else html.escape(_fmt(value))


def _fmt(value: Any) -> str:
    """A value as plain text (escaped where it reaches HTML)."""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _note(text: str) -> Html:
    return Html(f'<p class="note">{html.escape(text)}</p>')


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, CracknetError) else first_line(exc, named=True)


def _thumbnail(uri: str, side: int = THUMB) -> str:
    from cracknet.transforms import load_rgb

    try:
        img = load_rgb(storage.read_bytes(uri))
    except Exception:  # noqa: BLE001 - a missing or broken image just has no thumbnail
        return Html("<div>(unreadable)</div>")
    img.thumbnail((side, side))
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=85)
    return Html(f'<img alt="" src="data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()}">')


# ---------------------------------------------------------------------------------------------------
# The model's own run


def model_card_section(report: Report, card: dict) -> None:
    test = card.get("metrics", {}).get("test", {})
    intervals = test.get("intervals_95", {})
    metric_rows = [(name, _fmt(test[name]), "[{:.3f}, {:.3f}]".format(*intervals[name]) if name in intervals else "")
                   for name in ("accuracy", "precision", "recall", "f1", "roc_auc", "average_precision")
                   if test.get(name) is not None]
    data, training = card.get("data", {}), card.get("training", {})
    counts = data.get("counts", {})
    classes = card.get("class_names", ["no_crack", "crack"])
    split_rows = [(split, *(counts[split].get(c, 0) for c in classes)) for split in counts]
    point = card.get("operating_point", {})
    facts = [
        ("model id", card["model_id"]), ("created", card.get("created_at", "")),
        ("architecture", card.get("architecture", "resnet50")), ("training data", data.get("uri", "not recorded")),
        ("data fingerprint", data.get("fingerprint", "")),
        *lineage_facts(card),
        ("threshold", f"{card['threshold']:.4f} ({card.get('threshold_rule', '')})"),
        ("validation recall / precision at the threshold",
         f"{_fmt(point.get('val_recall', ''))} / {_fmt(point.get('val_precision', ''))}"
         + (f" (recall's {point['confidence']:.0%} lower bound {_fmt(point['recall_lower_bound'])})"
            if point.get("confidence") else "")),
        *([("validation false alarms at the threshold",
            f"{round(point['false_alarms'] * point['negatives'])} of {point['negatives']} no-crack images "
            f"({point['false_alarms']:.1%}; at most {point['max_false_alarms']:.0%} by rule)")]
          if point.get("false_alarms") is not None and point.get("negatives") else []),
        ("validation recall / precision at 0.5",
         f"{_fmt(point.get('val_recall_at_0.5', ''))} / {_fmt(point.get('val_precision_at_0.5', ''))}"),
        ("epochs", training.get("epochs_completed", "")),
        ("versions", ", ".join(f"{k} {v}" for k, v in card.get("versions", {}).items())),
    ]
    body = (_table(facts)
            + "<h3>Images per split and class</h3>" + _table(split_rows, ("split", *classes))
            + f"<h3>Test metrics at the threshold (95% bootstrap intervals {interval_unit(test)})</h3>"
            + _table(metric_rows, ("metric", "value", "interval"))
            + (f'<p class="note">{html.escape(test["interval_caveat"])}</p>' if test.get("interval_caveat") else "")
            + evaluations_table(card)
            + f'<p class="note"><b>Known limits.</b> {html.escape(LIMITS)}'
            + (f" {html.escape(operating_point_caveat(point))}" if operating_point_caveat(point) else "") + "</p>")
    report.section("Model card", body)


def interval_unit(metrics: dict) -> str:
    """What an interval resampled, in words: "over 6 groups of 82 images" or "over 773 images"."""
    if metrics.get("interval_unit") == "group":
        count = metrics["groups"]
        return f"over {count} group{'s' if count != 1 else ''} of {metrics.get('n', '?')} images, resampled whole"
    return f"over {metrics.get('n', '?')} images"


def interval_sentence(m: dict) -> str:
    """At the threshold: each headline metric with its interval and what the interval resampled."""
    intervals = m["intervals_95"]
    parts = ", ".join(f"{name} {m[name]:.4f} [{intervals[name][0]:.3f}, {intervals[name][1]:.3f}]"
                      for name in ("accuracy", "precision", "recall"))
    caveat = f" {m['interval_caveat']}" if m.get("interval_caveat") else ""
    return html.escape(f"At the threshold: {parts} (95% bootstrap intervals {interval_unit(m)}).{caveat}")


def lineage_facts(card: dict) -> list[tuple[str, str]]:
    """An adapted model's base model (and the base's own base, and so on), and the gain on this test split."""
    facts, node = [], card.get("lineage")
    if node:
        before, after = node["base_model_on_test"], card.get("metrics", {}).get("test", {})
        facts.append(("before / after adaptation (test split)",
                      f"accuracy {_fmt(before['accuracy'])} / {_fmt(after.get('accuracy', ''))}, "
                      f"recall {_fmt(before['recall'])} / {_fmt(after.get('recall', ''))}"))
    depth = 0
    while node:
        base = node["base_model"]
        depth += 1
        facts.append(("adapted from" if depth == 1 else f"which was adapted from ({depth})",
                      f"{base['uri']} (model_id {base['model_id']}; trained on {base.get('data_uri')}, "
                      f"data fingerprint {str(base.get('data_fingerprint'))[:16]})"))
        node = base.get("lineage")
    return facts


def evaluations_table(card: dict) -> str:
    """The surfaces this model was measured on (``cracknet evaluate --record``), one row each."""
    rows = card.get("evaluations", {})
    if not rows:
        return ""
    body = [(name, r.get("data", ""), r.get("images", ""), r.get("cracks", ""),
             *(r[k] if r.get(k) is not None else "n/a" for k in ("accuracy", "precision", "recall", "roc_auc")),
             r.get("evaluated_at", ""))
            for name, r in rows.items()]
    return ("<h3>Measured on other surfaces (at the threshold)</h3>"
            + _table(body, ("surface", "data", "images", "cracks", "accuracy", "precision", "recall", "ROC-AUC",
                            "evaluated")))


def training_section(report: Report, card: dict) -> None:
    history = card.get("training", {}).get("history", [])
    if not history:
        return
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
    loss_ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    loss_ax.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    loss_ax.set(title="Loss", xlabel="epoch", ylabel="binary cross-entropy")
    if all("train_accuracy" in h for h in history):
        acc_ax.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train (augmented)")
    acc_ax.plot(epochs, [h["val_accuracy"] for h in history], "o-", label="validation")
    acc_ax.set(title="Accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    from matplotlib.ticker import MaxNLocator

    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=.3)
        ax.legend()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    report.section("Training curves", report.figure("training_curves", fig))


# ---------------------------------------------------------------------------------------------------
# A labelled evaluation set


GROUP_ROWS = 20


def groups_table(found, threshold: float) -> str:
    """Per photo or structure, where the tree groups its images (``<label>/<photo>/<tile>``): the worst first."""
    from cracknet.evaluate import group_rows, groups_of

    grouping, groups = groups_of(found)
    rows = group_rows(found, groups, threshold)
    if not rows:
        return ""
    body = [(r["group"], r["images"], r["cracks"], r["missed"], r["false_alarms"], _fmt(r["accuracy"]))
            for r in rows[:GROUP_ROWS]]
    more = f", the {GROUP_ROWS} with the most errors" if len(rows) > GROUP_ROWS else ""
    return (f"<h3>Per group ({html.escape(grouping)}): {len(rows)} groups{more}</h3>"
            + _table(body, ("group", "images", "cracks", "missed", "false alarms", "accuracy")))


def evaluation_section(report: Report, card: dict, found, gallery: int) -> None:
    from cracknet.evaluate import groups_of

    plt = _pyplot()
    probs, labels, threshold = found.probs, found.labels.astype(bool), card["threshold"]
    m = binary_metrics(probs, labels, threshold)
    fpr, tpr, precision, _ = curve_points(probs, labels)

    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    matrix = np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]])
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", color="black" if v < matrix.max() / 2 else "white")
    names = [_plain(n) for n in card.get("class_names", ["no_crack", "crack"])]
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=names, yticklabels=names, xlabel="predicted",
           ylabel="true", title=f"Confusion matrix at {threshold:.3f}")
    confusion = report.figure("confusion_matrix", fig)

    fig, (pr_ax, roc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    pr_ax.plot(tpr, precision, label=f"AP {average_precision(probs, labels):.3f}")
    pr_ax.plot([m["recall"]], [m["precision"]], "ro", label=f"threshold {threshold:.3f}")
    pr_ax.set(title="Precision-recall", xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
    roc_ax.plot(np.r_[0, fpr], np.r_[0, tpr], label=f"ROC-AUC {m['roc_auc']:.3f}")
    roc_ax.plot([m["fp"] / max(1, m["fp"] + m["tn"])], [m["recall"]], "ro", label=f"threshold {threshold:.3f}")
    roc_ax.plot([0, 1], [0, 1], ":", color="grey")
    roc_ax.set(title="ROC", xlabel="false-positive rate", ylabel="recall (true-positive rate)")
    for ax in (pr_ax, roc_ax):
        ax.grid(alpha=.3)
        ax.legend(loc="lower left" if ax is pr_ax else "lower right")
    curves = report.figure("pr_roc_curves", fig)

    uris = np.array(found.uris, dtype=object)
    false_pos = np.nonzero(~labels & (probs >= threshold))[0]
    false_neg = np.nonzero(labels & (probs < threshold))[0]
    worst_fp = false_pos[np.argsort(-probs[false_pos])][:gallery]
    worst_fn = false_neg[np.argsort(probs[false_neg])][:gallery]

    def cards(indices) -> str:
        if len(indices) == 0:
            return '<p class="note">None.</p>'
        return '<div class="gallery">' + "".join(
            f"<figure>{_thumbnail(uris[i])}<figcaption>p={probs[i]:.3f}<br>{html.escape(uris[i])}</figcaption>"
            "</figure>" for i in indices) + "</div>"

    summary = f"<p>{len(probs)} images of {html.escape(found.source)}; {len(found.unreadable)} unreadable. " + \
        interval_sentence(evaluation(probs, labels, threshold, groups=groups_of(found)[1])) + "</p>"
    report.section("Evaluation", summary + confusion + curves + groups_table(found, threshold)
                   + f"<h3>Most confident false positives ({len(false_pos)} in all)</h3>" + cards(worst_fp)
                   + f"<h3>Most confident false negatives: missed cracks ({len(false_neg)} in all)</h3>"
                   + cards(worst_fn))


# ---------------------------------------------------------------------------------------------------
# A scoring output


def require_results(results: str) -> None:
    from cracknet.query import run_query

    if run_query(results, "SELECT count(*) AS n FROM results").column(0)[0].as_py() == 0:
        raise CracknetError(f"{results} holds no committed scoring results; give the --output of a finished "
                            f"`cracknet score` run.")


def _short_names(prefixes: list[str]) -> list[str]:
    """Structure prefixes without the folders they all share (whole path segments only)."""
    if len(prefixes) < 2:
        return prefixes
    shared = os.path.commonprefix(prefixes)
    shared = shared[:shared.rfind("/") + 1]
    return [p[len(shared):] or p for p in prefixes]


def tile_map(image_uri: str, tiles: list[dict], threshold: float, side: int = 640) -> bytes:
    """The photo, downscaled, tinted red by crack probability, with the flagged area outlined.

    Tiles overlap, so each pixel takes the highest probability of the tiles covering it. The tint
    stays translucent so the crack itself shows through; the outline marks where some tile reached
    ``threshold``.
    """
    from PIL import ImageFilter

    from cracknet.transforms import load_rgb

    img = load_rgb(storage.read_bytes(image_uri))
    scale = min(1.0, side / max(img.size))
    shown = img.resize((max(1, int(img.width * scale)), max(1, int(img.height * scale))))
    heat = np.zeros((shown.height, shown.width), dtype=np.float32)
    for t in tiles:
        x0, y0 = int(t["tile_x"] * scale), int(t["tile_y"] * scale)
        x1, y1 = int(np.ceil((t["tile_x"] + t["tile_w"]) * scale)), int(np.ceil((t["tile_y"] + t["tile_h"]) * scale))
        np.maximum(heat[y0:y1, x0:x1], float(t["crack_probability"]), out=heat[y0:y1, x0:x1])
    flagged = Image.fromarray(((heat >= threshold) * 255).astype(np.uint8), mode="L")
    edge = np.asarray(flagged.filter(ImageFilter.MaxFilter(5))) > np.asarray(flagged)  # just outside the area
    alpha = (0.45 * heat ** 2)[..., None]
    out = np.asarray(shown, dtype=np.float32) * (1 - alpha) + np.array([230.0, 0, 0]) * alpha
    out[edge] = (230, 0, 0)
    buffer = io.BytesIO()
    Image.fromarray(out.clip(0, 255).astype(np.uint8), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def scoring_section(report: Report, results: str, top: int, maps: int, card: dict) -> None:
    """Scoring figures; thresholds drawn are ``card``'s (the section says so when other models scored)."""
    from cracknet.query import run_query

    from cracknet.query import connect

    plt = _pyplot()
    con = connect(results)  # one connection (one read of the table's log) for every figure

    def ask(sql: str):
        return run_query(results, sql, con=con)

    images = ask("SELECT crack_probability FROM current WHERE error IS NULL").column(0).to_numpy()
    per_day = ask("SELECT CAST(scored_at AS DATE) AS day, count(*) AS images, "
                   "count(*) FILTER (WHERE is_crack) AS cracks FROM images GROUP BY 1 ORDER BY 1")
    structures = ask("SELECT * FROM structures LIMIT 25").to_pylist()
    likely = ask(f"SELECT image_uri, crack_probability, tiles_scored FROM current "
                  f"WHERE error IS NULL ORDER BY crack_probability DESC LIMIT {int(top)}").to_pylist()
    errors = ask("SELECT count(*) AS n FROM failures").to_pylist()[0]["n"]
    scored_by = {m for m in ask("SELECT DISTINCT model_id FROM images").column(0).to_pylist() if m}
    threshold = card["threshold"]

    fig, (hist_ax, day_ax) = plt.subplots(1, 2, figsize=(11, 3.6))
    hist_ax.hist(images, bins=40, range=(0, 1), color="#c0392b")
    hist_ax.axvline(threshold, color="black", linestyle=":", label=f"threshold {threshold:.3f}")
    hist_ax.legend()
    hist_ax.set(title=f"Crack probability ({len(images)} images)", xlabel="probability", ylabel="images")
    days = [str(d) for d in per_day.column("day").to_pylist()]
    day_ax.bar(days, per_day.column("images").to_pylist(), color="#95a5a6", label="images")
    day_ax.bar(days, per_day.column("cracks").to_pylist(), color="#c0392b", label="cracks")
    day_ax.set(title="Per day", ylabel="images")
    day_ax.legend()
    day_ax.tick_params(axis="x", rotation=45)
    overview = report.figure("scoring_overview", fig)

    fig, ax = plt.subplots(figsize=(11, max(2.5, 0.3 * len(structures))))
    names = [_plain(name[-60:]) for name in _short_names([s["structure"] for s in structures])][::-1]
    ax.barh(names, [s["images"] for s in structures][::-1], color="#95a5a6", label="images")
    ax.barh(names, [s["cracks"] for s in structures][::-1], color="#c0392b", label="cracks")
    ax.set(title="Per structure (folder)", xlabel="images")
    ax.legend()
    per_structure = report.figure("scoring_structures", fig)

    rows = [(_thumbnail(r["image_uri"], 96), r["image_uri"], f"{r['crack_probability']:.3f}",
             r["tiles_scored"]) for r in likely]
    other = sorted(scored_by - {card["model_id"]})
    note = (f" Scored by model {html.escape(', '.join(other))} as well as or instead of "
            f"{html.escape(card['model_id'])}: "
            f"is_crack follows each scoring model's threshold; the lines drawn here are {threshold:.3f}, "
            f"this report's model's." if other else "")
    body = (f"<p>{len(images)} images scored, {errors} error rows, in {html.escape(results)}.{note}</p>" + overview
            + per_structure + f"<h3>Top {len(rows)} most likely cracks</h3>"
            + _table(rows, ("", "image", "probability", "tiles")))
    large = [r for r in likely if r["tiles_scored"] > 1][:maps]
    for i, r in enumerate(large):
        tiles = ask("SELECT * FROM tiles_above('{}', 0.0)".format(r["image_uri"].replace("'", "''"))).to_pylist()
        try:
            drawn = report.png(f"tile_map_{i + 1}", tile_map(r["image_uri"], tiles, threshold))
        except Exception as exc:  # noqa: BLE001 - e.g. the photo was deleted since it was scored
            drawn = _note(f"The map could not be drawn: {_reason(exc)}")
        body += (f"<h3>Tile crack map: {html.escape(r['image_uri'])} (p={r['crack_probability']:.3f}; "
                 f"outlined: tiles at or above {threshold:.3f})</h3>" + drawn)
    report.section("Scoring results", body)


GEOMETRY_PHOTOS = 6


def crack_photo(image_uri: str, cracks: list[dict], classes, side: int = 640) -> bytes:
    """The photo, downscaled, with its cracks' centre lines drawn by severity (``drawing.draw_cracks``)."""
    from cracknet.drawing import draw_cracks
    from cracknet.transforms import load_rgb

    img = load_rgb(storage.read_bytes(image_uri))
    scale = min(1.0, side / max(img.size))
    shown = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
    buffer = io.BytesIO()
    draw_cracks(shown, cracks, scale, classes).save(buffer, format="PNG")
    return buffer.getvalue()


def geometry_section(report: Report, results: str, photos: int = GEOMETRY_PHOTOS) -> None:
    """Crack geometry of the current images: top photos with crack lines, widths, lengths per structure."""
    from cracknet.drawing import colour_of, legend
    from cracknet.geometry import DEFAULT_WIDTH_CLASSES, parse_width_classes
    from cracknet.query import run_query
    from cracknet.query import connect

    con = connect(results)
    if not run_query(results, "SELECT count(*) FROM current WHERE crack_count IS NOT NULL", con=con)[0][0].as_py():
        return  # scored by models that draw no masks: nothing to say here
    cracks = run_query(results, "SELECT structure, width_p95_px, width_p95_mm, length_px, length_mm, severity "
                                "FROM cracks", con=con).to_pylist()
    if not cracks:
        report.section("Crack geometry", _note("No crack was measured in these results: no tile reached the "
                                               "mask gate."))
        return
    classes = parse_width_classes(DEFAULT_WIDTH_CLASSES)
    mm = all(c["width_p95_mm"] is not None for c in cracks)
    unit = "mm" if mm else "px"
    plt = _pyplot()
    fig, width_ax = plt.subplots(figsize=(7, 3.4))
    width_ax.hist([c[f"width_p95_{unit}"] for c in cracks], bins=30, color="#c0392b")
    for c in classes if mm else ():
        if c.below_mm is not None:
            width_ax.axvline(c.below_mm, color="black", linestyle=":")
    width_ax.set(title=f"Crack width, 95th percentile ({len(cracks)} cracks; dotted: the class bounds)",
                 xlabel=unit, ylabel="cracks")
    body = report.figure("crack_widths", fig)
    names = sorted({c["structure"] for c in cracks})[:25]
    fig, length_ax = plt.subplots(figsize=(11, max(2.2, 0.35 * len(names) + 1.2)))
    short = dict(zip(names, [_plain(n[-50:]) for n in _short_names(names)]))
    severities = [c.name for c in classes] + [None]
    left = np.zeros(len(names))
    for severity in severities:
        totals = np.array([sum(c[f"length_{unit}"] for c in cracks if c["structure"] == n and c["severity"] == severity)
                           for n in names])
        if totals.any():
            length_ax.barh([short[n] for n in names], totals, left=left, color=colour_of(severity, classes),
                           label=severity or "not graded")
            left += totals
    length_ax.set(title="Crack length per structure (folder), by severity", xlabel=unit)
    length_ax.legend()
    body += report.figure("crack_lengths", fig)
    top = run_query(results, f"SELECT c.image_uri, c.crack_count, c.crack_length_{unit} AS length, c.severity, "
                             f"r.cracks FROM current c JOIN results r USING (image_uri, run_id) "
                             f"WHERE c.crack_count > 0 ORDER BY c.crack_length_px DESC LIMIT {int(photos)}",
                    con=con).to_pylist()
    key = "".join(f'<span style="color:{colour}">&#9632;</span> {html.escape(text)} &nbsp; '
                  for colour, text in legend(classes))
    body += f"<p>{key}</p>"
    for i, r in enumerate(top):
        try:
            drawn = report.png(f"crack_lines_{i + 1}", crack_photo(r["image_uri"], r["cracks"], classes))
        except Exception as exc:  # noqa: BLE001 - e.g. the photo was deleted since it was scored
            drawn = _note(f"The photo could not be drawn: {_reason(exc)}")
        count = f"{r['crack_count']} crack{'s' if r['crack_count'] != 1 else ''}"
        body += (f"<h3>{html.escape(r['image_uri'])}: {count}, {r['length']:.1f} {unit} in all"
                 f"{', ' + html.escape(r['severity']) if r['severity'] else ''}</h3>" + drawn)
    report.section("Crack geometry", body)


NIGHTS_SHOWN, CHANGES_SHOWN = 30, 8


def _nights(results: str) -> list[dict]:
    """The scoring runs of ``results``, oldest first, each with its monitoring record (None before monitoring)."""
    import json

    from cracknet import runs

    rows = [r for r in runs.read(results).to_pylist() if r["job"] == "scoring"]
    rows.sort(key=lambda r: (r["started_at"], r["run_id"]))
    for r in rows:
        r["record"] = json.loads(r["monitoring"]) if r.get("monitoring") else None
        r["fired"] = json.loads(r["alerts"]) if r.get("alerts") else []
    return rows


def nights_section(report: Report, results: str) -> None:
    """Nights over time (images, crack rate, errors, alerts), the drift figures, and the latest nights' alerts."""
    from cracknet.monitor import Rules

    nights = [n for n in _nights(results) if n["scored"]][-NIGHTS_SHOWN:]
    if not nights:
        return
    plt = _pyplot()
    labels = [n["started_at"].strftime("%m-%d %H:%M") for n in nights]
    x = np.arange(len(nights))
    fig, (count_ax, rate_ax, drift_ax) = plt.subplots(3, 1, figsize=(11, 8.4), sharex=True)
    count_ax.bar(x, [n["scored"] for n in nights], color="#95a5a6", label="images")
    count_ax.bar(x, [n["errors"] for n in nights], color="#8e44ad", label="error rows")
    count_ax.set(title="Nights: images scored and error rows", ylabel="images")
    count_ax.legend()
    rates = [n["record"]["crack_rate"] if n["record"] else np.nan for n in nights]
    rate_ax.plot(x, rates, "o-", color="#c0392b", label="crack rate")
    alerted = [i for i, n in enumerate(nights) if n["fired"]]
    rate_ax.plot(alerted, [np.nan_to_num(rates[i]) for i in alerted], "v", color="black", markersize=11,
                 label="a night with alerts")
    rate_ax.set(title="Crack rate (share of scored images called crack)", ylabel="share", ylim=(0, 1.05))
    rate_ax.legend()
    limit = ((nights[-1]["record"] or {}).get("rules") or {}).get("psi", Rules().psi)  # the latest night's rule
    for key, label, style in (("probability_psi", "probabilities vs recent nights", "o-"),
                              ("brightness_psi", "brightness vs recent nights", "s-"),
                              ("sharpness_psi", "sharpness vs recent nights", "^-"),
                              ("probability_psi_validation", "probabilities vs validation (shown only)", "x:")):
        values = [(n["record"] or {}).get("drift", {}).get(key, np.nan) for n in nights]
        if not all(np.isnan(values)):
            drift_ax.plot(x, values, style, label=label)
    drift_ax.axhline(limit, color="black", linestyle="--", label=f"alert above {limit:.2f}")
    drift_ax.set(title="Drift: population-stability index", ylabel="PSI")
    drift_ax.set_yscale("symlog", linthresh=0.1)
    drift_ax.set_ylim(0, max([limit, *[v for line in drift_ax.get_lines() for v in line.get_ydata()
                                      if np.isfinite(v)]]) * 1.6)
    drift_ax.legend(fontsize=8)
    drift_ax.set_xticks(x, labels, rotation=45, ha="right")
    body = report.figure("nights", fig)
    rows = [(n["run_id"], n["started_at"].strftime("%Y-%m-%d %H:%M"), n.get("model_version") or n["model_id"],
             n["scored"], n["errors"], "" if not n["record"] else f"{n['record']['crack_rate']:.1%}",
             Html("<br>".join(html.escape(f"{a['rule']}: {a['message']}") for a in n["fired"])) if n["fired"]
             else "none") for n in reversed(nights)]
    body += _table(rows[:14], ("run", "started (UTC)", "model", "images", "errors", "crack rate", "alerts"))
    report.section("Nights", body)


def _survey_photo(con, results: str, structure: str, run_id: str) -> Html:
    """The photo that best shows a structure's cracks in one survey: most crack length, else most likely crack."""
    from cracknet.geometry import DEFAULT_WIDTH_CLASSES, parse_width_classes
    from cracknet.query import run_query

    found = run_query(results, "SELECT image_uri, cracks, crack_probability FROM results WHERE run_id = '{}' AND "
                               "error IS NULL AND regexp_replace(image_uri, '/[^/]*$', '') = '{}' ORDER BY "
                               "coalesce(crack_length_px, 0) DESC, crack_probability DESC LIMIT 1".format(
                                   run_id.replace("'", "''"), structure.replace("'", "''")), con=con).to_pylist()
    if not found:
        return Html("<div>(none)</div>")
    uri, cracks = found[0]["image_uri"], found[0]["cracks"] or []
    try:
        data = crack_photo(uri, cracks, parse_width_classes(DEFAULT_WIDTH_CLASSES), side=320)
    except Exception:  # noqa: BLE001 - the photo was moved or deleted since
        return Html("<div>(unreadable)</div>")
    caption = html.escape(uri.rsplit("/", 1)[-1])
    return Html(f'<figure style="margin:0"><img alt="" src="data:image/png;base64,'
                f'{base64.b64encode(data).decode()}"><figcaption class="note">{caption}</figcaption></figure>')


def changes_section(report: Report, results: str) -> None:
    """The structures whose cracks grew since their previous survey, with a photo of each survey."""
    from cracknet.query import run_query
    from cracknet.query import connect

    con = connect(results)
    changes = run_query(results, "SELECT * FROM structure_changes WHERE cracks_change > 0 OR "
                                 "crack_length_mm_change > 0", con=con).to_pylist()
    if not changes:
        surveyed = run_query(results, "SELECT count(*) FROM structure_changes", con=con)[0][0].as_py()
        report.section("Structure changes", _note(
            f"{surveyed} structures were surveyed more than once; none has more cracks than at its previous survey."
            if surveyed else "No structure has been surveyed twice yet."))
        return
    rows = []
    for c in changes[:CHANGES_SHOWN]:
        length = (f"{c['previous_crack_length_mm']:.0f} -> {c['crack_length_mm']:.0f} mm"
                  if c["crack_length_mm"] or c["previous_crack_length_mm"] else "")
        rows.append((c["structure"], f"{c['previous_cracks']} -> {c['cracks']} of {c['images']} images", length,
                     _survey_photo(con, results, c["structure"], c["previous_run_id"]),
                     _survey_photo(con, results, c["structure"], c["run_id"])))
    more = f" The {CHANGES_SHOWN} with the most growth are shown." if len(changes) > CHANGES_SHOWN else ""
    grew = f"{len(changes)} structure shows" if len(changes) == 1 else f"{len(changes)} structures show"
    report.section("Structure changes", f"<p>{grew} more cracks than at the previous survey.{more}</p>" + _table(rows, ("structure", "cracked images",
                                                                             "crack length", "before", "after")))


def build_report(model_uri: str | None, out: str, data: str | None = None, split: str = "all",
                 results: str | None = None, gallery: int = 8, top: int = 20, maps: int = 3) -> dict:
    """The report of a model (``model_uri``), of an evaluation set (``data``) and of scoring results
    (``results``: its nights, structure changes and crack geometry too); without a model, of the results alone."""
    from cracknet.evaluate import predict_tree
    from cracknet.scorer import Scorer

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
    return {"report": report.write(), "figures": report.files}
