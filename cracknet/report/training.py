"""The report's sections about the model: its card, how it was trained, and how it did on labelled images."""

from __future__ import annotations

import html

import numpy as np

from cracknet.measure.intervals import evaluation
from cracknet.measure.metrics import average_precision, binary_metrics, curve_points
from cracknet.measure.thresholds import operating_point_caveat
from cracknet.report.page import Report, fmt, plain, pyplot, table_html, thumbnail_html

LIMITS = ("Trained and tested on the labelled images named in the card (concrete surface patches for the "
          "METU set); accuracy on other surfaces, materials, scales or cameras is unknown until measured with "
          "cracknet evaluate on labelled images of them. The threshold was chosen for recall on the "
          "validation split; precision at that threshold is the cost of that choice.")


def model_card_section(report: Report, card: dict) -> None:
    test = card.get("metrics", {}).get("test", {})
    intervals = test.get("intervals_95", {})
    metric_rows = [(name, fmt(test[name]), "[{:.3f}, {:.3f}]".format(*intervals[name]) if name in intervals else "")
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
         f"{fmt(point.get('val_recall', ''))} / {fmt(point.get('val_precision', ''))}"
         + (f" (recall's {point['confidence']:.0%} lower bound {fmt(point['recall_lower_bound'])})"
            if point.get("confidence") else "")),
        *([("validation false alarms at the threshold",
            f"{round(point['false_alarms'] * point['negatives'])} of {point['negatives']} no-crack images "
            f"({point['false_alarms']:.1%}; at most {point['max_false_alarms']:.0%} by rule)")]
          if point.get("false_alarms") is not None and point.get("negatives") else []),
        ("validation recall / precision at 0.5",
         f"{fmt(point.get('val_recall_at_0.5', ''))} / {fmt(point.get('val_precision_at_0.5', ''))}"),
        ("epochs", training.get("epochs_completed", "")),
        ("versions", ", ".join(f"{k} {v}" for k, v in card.get("versions", {}).items())),
    ]
    body = (table_html(facts)
            + "<h3>Images per split and class</h3>" + table_html(split_rows, ("split", *classes))
            + f"<h3>Test metrics at the threshold (95% bootstrap intervals {interval_unit(test)})</h3>"
            + table_html(metric_rows, ("metric", "value", "interval"))
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
                      f"accuracy {fmt(before['accuracy'])} / {fmt(after.get('accuracy', ''))}, "
                      f"recall {fmt(before['recall'])} / {fmt(after.get('recall', ''))}"))
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
            + table_html(body, ("surface", "data", "images", "cracks", "accuracy", "precision", "recall", "ROC-AUC",
                            "evaluated")))


def training_section(report: Report, card: dict) -> None:
    history = card.get("training", {}).get("history", [])
    if not history:
        return
    plt = pyplot()
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


GROUP_ROWS = 20


def groups_table(found, threshold: float) -> str:
    """Per photo or structure, where the tree groups its images (``<label>/<photo>/<tile>``): the worst first."""
    from cracknet.predict.evaluate import group_rows, groups_of

    grouping, groups = groups_of(found)
    rows = group_rows(found, groups, threshold)
    if not rows:
        return ""
    body = [(r["group"], r["images"], r["cracks"], r["missed"], r["false_alarms"], fmt(r["accuracy"]))
            for r in rows[:GROUP_ROWS]]
    more = f", the {GROUP_ROWS} with the most errors" if len(rows) > GROUP_ROWS else ""
    return (f"<h3>Per group ({html.escape(grouping)}): {len(rows)} groups{more}</h3>"
            + table_html(body, ("group", "images", "cracks", "missed", "false alarms", "accuracy")))


def evaluation_section(report: Report, card: dict, found, gallery: int) -> None:
    from cracknet.predict.evaluate import groups_of

    plt = pyplot()
    probs, labels, threshold = found.probs, found.labels.astype(bool), card["threshold"]
    m = binary_metrics(probs, labels, threshold)
    fpr, tpr, precision, _ = curve_points(probs, labels)

    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    matrix = np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]])
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", color="black" if v < matrix.max() / 2 else "white")
    names = [plain(n) for n in card.get("class_names", ["no_crack", "crack"])]
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
            f"<figure>{thumbnail_html(uris[i])}<figcaption>p={probs[i]:.3f}<br>{html.escape(uris[i])}</figcaption>"
            "</figure>" for i in indices) + "</div>"

    summary = f"<p>{len(probs)} images of {html.escape(found.source)}; {len(found.unreadable)} unreadable. " + \
        interval_sentence(evaluation(probs, labels, threshold, groups=groups_of(found)[1])) + "</p>"
    report.section("Evaluation", summary + confusion + curves + groups_table(found, threshold)
                   + f"<h3>Most confident false positives ({len(false_pos)} in all)</h3>" + cards(worst_fp)
                   + f"<h3>Most confident false negatives: missed cracks ({len(false_neg)} in all)</h3>"
                   + cards(worst_fn))
