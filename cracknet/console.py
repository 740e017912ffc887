"""What the commands print: metrics lines, tables of surfaces and groups, crack lines and alerts, as plain text
for a terminal (``cli`` decides what to run; this module how its results read)."""

from __future__ import annotations

from cracknet import screen
from cracknet.measure.thresholds import operating_point_caveat
from cracknet.model.card import MODEL_SIZE

METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "roc_auc", "average_precision")


def format_metrics(metrics: dict) -> str:
    intervals = metrics.get("intervals_95", {})
    parts = []
    for name in METRIC_NAMES:
        if name in metrics and metrics[name] is not None:
            low, high = intervals.get(name, (None, None))
            parts.append(f"{name} {metrics[name]:.4f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else ""))
    count = metrics.get("groups")
    groups = f", {count} group{'s' if count != 1 else ''} resampled whole" if count else ""
    return ", ".join(parts) + f" (threshold {metrics['threshold']:.3f}, n={metrics['n']}{groups})"


def false_alarm_text(point: dict) -> str:
    """", false alarms 4 of 61 no-crack images (6.6%)"; "" where the card does not count them."""
    if point.get("negatives") is None or point.get("false_alarms") is None:
        return ""
    flagged = round(point["false_alarms"] * point["negatives"])
    return f", false alarms {flagged} of {point['negatives']} no-crack images ({point['false_alarms']:.1%})"


def print_training(card: dict) -> None:
    # Start on a fresh line: Ray's progress bars may have left the cursor mid-line.
    point = card["operating_point"]
    bound = (f", {point['confidence']:.0%} lower bound {point['recall_lower_bound']:.3f}"
             if point.get("confidence") else "")
    print(f"Threshold {card['threshold']:.3f} for recall >= {point['target_recall']}: validation recall "
          f"{point['val_recall']:.3f}{bound}, precision {point['val_precision']:.3f}{false_alarm_text(point)} "
          f"(at 0.5: recall {point['val_recall_at_0.5']:.3f}, precision {point['val_precision_at_0.5']:.3f})")
    if operating_point_caveat(point):
        advice = " Hold out more images (--val-fraction) or lower --recall-confidence." if not point["backed"] else ""
        print(f"Warning: {operating_point_caveat(point)}{advice}")
    print(f"Test metrics: {format_metrics(card['metrics']['test'])}")
    if card["metrics"]["test"].get("interval_caveat"):
        print(f"Note: {card['metrics']['test']['interval_caveat']}")
    print(f"Test at 0.5:  {format_metrics(card['metrics']['test_at_0.5'])}")
    if "mask" in card:
        mask = card["mask"]
        print(f"Crack masks: threshold {mask['threshold']:.2f} (best on validation); pixel F1 within "
              f"{mask['val']['tolerance_px']:g} px {mask['val']['f1']:.3f} (IoU {mask['val']['iou']:.3f}) on "
              f"{mask['val']['images']} validation masks, {mask['test']['f1']:.3f} (IoU {mask['test']['iou']:.3f}) "
              f"on {mask['test']['images']} test masks, at {mask.get('measured_at', MODEL_SIZE)}.")
    if "lineage" in card:
        base, before, after = card["lineage"]["base_model"], card["lineage"]["base_model_on_test"], card["metrics"]["test"]
        print(f"Adapted from {base['uri']} (model_id {base['model_id']}): on this test split the base model had "
              f"accuracy {before['accuracy']:.4f}, recall {before['recall']:.4f} (its threshold "
              f"{base['threshold']:.3f}); adapted: accuracy {after['accuracy']:.4f}, recall {after['recall']:.4f}.")
    print(f"Model artifact: {card['folder']} (model_id {card['model_id']})")
    if card.get("registered"):
        version = card["registered"]
        print(f"Registered as version {version['version']} of {version['name']} in MLflow "
              f"(models:/{version['name']}/{version['version']}).")


def surface_table(rows: dict[str, dict]) -> list[str]:
    width = max(8, *(len(name) for name in rows))
    masks = any("masks" in r for r in rows.values())
    lines = [f"{'surface':<{width}} {'images':>7} {'cracks':>7} {'accuracy':>9} {'precision':>10} {'recall':>8} "
             f"{'AUC':>7}" + (f" {'mask F1':>8} {'IoU':>6}" if masks else "")]
    for name, r in rows.items():
        auc = "n/a" if r["roc_auc"] is None or r["roc_auc"] != r["roc_auc"] else f"{r['roc_auc']:.4f}"
        pixels = "" if not masks else f" {'n/a':>8} {'n/a':>6}" if "masks" not in r else \
            f" {r['masks']['f1']:>8.4f} {r['masks']['iou']:>6.3f}"
        lines.append(f"{name:<{width}} {r['images']:>7} {r['cracks']:>7} {r['accuracy']:>9.4f} "
                     f"{r['precision']:>10.4f} {r['recall']:>8.4f} {auc:>7}{pixels}")
    return lines


GROUP_ROWS = 10


def group_table(groups: list[dict], grouping: str) -> list[str]:
    """The groups (photos, structures) with the most errors, one line each; the rest counted."""
    width = max(5, *(len(r["group"]) for r in groups[:GROUP_ROWS]))
    lines = [f"Per group ({grouping}), {len(groups)} groups" + (f"; the {GROUP_ROWS} with the most errors:"
                                                                 if len(groups) > GROUP_ROWS else ":"),
             f"{'group':<{width}} {'images':>7} {'cracks':>7} {'missed':>7} {'false alarms':>13} {'accuracy':>9}"]
    lines += [f"{r['group']:<{width}} {r['images']:>7} {r['cracks']:>7} {r['missed']:>7} {r['false_alarms']:>13} "
              f"{r['accuracy']:>9.4f}" for r in groups[:GROUP_ROWS]]
    return lines


def mask_line(m: dict) -> str:
    """The console line of masks' pixel metrics."""
    return (f"Crack masks ({m['images']} photos, pixels within {m['tolerance_px']:g} px): precision "
            f"{m['precision']:.3f}, recall {m['recall']:.3f}, F1 {m['f1']:.3f}, IoU {m['iou']:.3f} at the mask "
            f"threshold {m['threshold']:.2f}; best fixed threshold (ODS) {m['ods_threshold']:.2f}, F1 {m['ods_f1']:.3f}.")


def crack_lines(cracks: list[dict], most: int = 10) -> list[str]:
    """One line per crack (the longest first), in millimetres where the scale is known."""
    def size(c: dict, key: str) -> str:
        return f"{c[key + '_mm']:.2f} mm" if c.get(key + "_mm") is not None else f"{c[key + '_px']:.1f} px"

    lines = [f"  crack {i + 1}: {c['orientation']}, length {size(c, 'length')}, width {size(c, 'width_mean')} mean, "
             f"{size(c, 'width_p95')} at the 95th percentile" + (f", {c['severity']}" if c.get("severity") else "")
             for i, c in enumerate(cracks[:most])]
    if len(cracks) > most:
        lines.append(f"  ... and {len(cracks) - most} shorter cracks")
    return lines


def alert_lines(s: dict) -> list[str]:
    """The summary's monitoring lines: none on a quiet night, else one per fired rule and how they were sent."""
    alerts = s.get("alerts") or []
    if not alerts:
        return []
    sent = f"; {s['alert_delivery']}" if s.get("alert_delivery") else ""
    return [screen.line(f"Alerts: {len(alerts)}{sent}.")] + [screen.line(f"  {a['rule']}: {a['message']}")
                                                              for a in alerts]
