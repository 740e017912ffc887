"""The report's sections about scoring results: where on each photo, cracks and their widths, nights and
structures that changed."""

from __future__ import annotations

import base64
import html
import io
import os

import numpy as np
from PIL import Image

from cracknet import storage
from cracknet.errors import CracknetError
from cracknet.report.page import Html, Report, failure_text, note_html, plain, pyplot, table_html, thumbnail_html


def require_results(results: str) -> None:
    from cracknet.table.query import run_query

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

    from cracknet.images.decoding import load_rgb

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
    from cracknet.table.query import connect, run_query

    plt = pyplot()
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
    names = [plain(name[-60:]) for name in _short_names([s["structure"] for s in structures])][::-1]
    ax.barh(names, [s["images"] for s in structures][::-1], color="#95a5a6", label="images")
    ax.barh(names, [s["cracks"] for s in structures][::-1], color="#c0392b", label="cracks")
    ax.set(title="Per structure (folder)", xlabel="images")
    ax.legend()
    per_structure = report.figure("scoring_structures", fig)

    rows = [(thumbnail_html(r["image_uri"], 96), r["image_uri"], f"{r['crack_probability']:.3f}",
             r["tiles_scored"]) for r in likely]
    other = sorted(scored_by - {card["model_id"]})
    note = (f" Scored by model {html.escape(', '.join(other))} as well as or instead of "
            f"{html.escape(card['model_id'])}: "
            f"is_crack follows each scoring model's threshold; the lines drawn here are {threshold:.3f}, "
            f"this report's model's." if other else "")
    body = (f"<p>{len(images)} images scored, {errors} error rows, in {html.escape(results)}.{note}</p>" + overview
            + per_structure + f"<h3>Top {len(rows)} most likely cracks</h3>"
            + table_html(rows, ("", "image", "probability", "tiles")))
    large = [r for r in likely if r["tiles_scored"] > 1][:maps]
    for i, r in enumerate(large):
        tiles = ask("SELECT * FROM tiles_above('{}', 0.0)".format(r["image_uri"].replace("'", "''"))).to_pylist()
        try:
            drawn = report.png(f"tile_map_{i + 1}", tile_map(r["image_uri"], tiles, threshold))
        except Exception as exc:  # noqa: BLE001 - e.g. the photo was deleted since it was scored
            drawn = note_html(f"The map could not be drawn: {failure_text(exc)}")
        body += (f"<h3>Tile crack map: {html.escape(r['image_uri'])} (p={r['crack_probability']:.3f}; "
                 f"outlined: tiles at or above {threshold:.3f})</h3>" + drawn)
    report.section("Scoring results", body)


GEOMETRY_PHOTOS = 6


def crack_photo(image_uri: str, cracks: list[dict], classes, side: int = 640) -> bytes:
    """The photo, downscaled, with its cracks' centre lines drawn by severity (``drawing.draw_cracks``)."""
    from cracknet.images.decoding import load_rgb
    from cracknet.images.drawing import draw_cracks

    img = load_rgb(storage.read_bytes(image_uri))
    scale = min(1.0, side / max(img.size))
    shown = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
    buffer = io.BytesIO()
    draw_cracks(shown, cracks, scale, classes).save(buffer, format="PNG")
    return buffer.getvalue()


def geometry_section(report: Report, results: str, photos: int = GEOMETRY_PHOTOS) -> None:
    """Crack geometry of the current images: top photos with crack lines, widths, lengths per structure."""
    from cracknet.images.drawing import colour_of, legend
    from cracknet.measure.geometry import DEFAULT_WIDTH_CLASSES, parse_width_classes
    from cracknet.table.query import connect, run_query

    con = connect(results)
    if not run_query(results, "SELECT count(*) FROM current WHERE crack_count IS NOT NULL", con=con)[0][0].as_py():
        return  # scored by models that draw no masks: nothing to say here
    cracks = run_query(results, "SELECT structure, width_p95_px, width_p95_mm, length_px, length_mm, severity "
                                "FROM cracks", con=con).to_pylist()
    if not cracks:
        report.section("Crack geometry", note_html("No crack was measured in these results: no tile reached the "
                                               "mask gate."))
        return
    classes = parse_width_classes(DEFAULT_WIDTH_CLASSES)
    mm = all(c["width_p95_mm"] is not None for c in cracks)
    unit = "mm" if mm else "px"
    plt = pyplot()
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
    short = dict(zip(names, [plain(n[-50:]) for n in _short_names(names)]))
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
            drawn = note_html(f"The photo could not be drawn: {failure_text(exc)}")
        count = f"{r['crack_count']} crack{'s' if r['crack_count'] != 1 else ''}"
        body += (f"<h3>{html.escape(r['image_uri'])}: {count}, {r['length']:.1f} {unit} in all"
                 f"{', ' + html.escape(r['severity']) if r['severity'] else ''}</h3>" + drawn)
    report.section("Crack geometry", body)


NIGHTS_SHOWN, CHANGES_SHOWN = 30, 8


def _nights(results: str) -> list[dict]:
    """The scoring runs of ``results``, oldest first, each with its monitoring record (None before monitoring)."""
    import json

    from cracknet.table import runs

    rows = [r for r in runs.read(results).to_pylist() if r["job"] == "scoring"]
    rows.sort(key=lambda r: (r["started_at"], r["run_id"]))
    for r in rows:
        r["record"] = json.loads(r["monitoring"]) if r.get("monitoring") else None
        r["fired"] = json.loads(r["alerts"]) if r.get("alerts") else []
    return rows


def nights_section(report: Report, results: str) -> None:
    """Nights over time (images, crack rate, errors, alerts), the drift figures, and the latest nights' alerts."""
    from cracknet.score.monitor import Rules

    nights = [n for n in _nights(results) if n["scored"]][-NIGHTS_SHOWN:]
    if not nights:
        return
    plt = pyplot()
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
    body += table_html(rows[:14], ("run", "started (UTC)", "model", "images", "errors", "crack rate", "alerts"))
    report.section("Nights", body)


def _survey_photo(con, results: str, structure: str, run_id: str) -> Html:
    """The photo that best shows a structure's cracks in one survey: most crack length, else most likely crack."""
    from cracknet.measure.geometry import DEFAULT_WIDTH_CLASSES, parse_width_classes
    from cracknet.table.query import run_query

    found = run_query(results, "SELECT r.image_uri, r.cracks, r.crack_probability FROM results r JOIN located l "
                               "USING (image_uri, run_id) WHERE run_id = '{}' AND structure = '{}' ORDER BY "
                               "coalesce(r.crack_length_px, 0) DESC, r.crack_probability DESC LIMIT 1".format(
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
    from cracknet.table.query import connect, run_query

    con = connect(results)
    changes = run_query(results, "SELECT * FROM structure_changes WHERE cracks_change > 0 OR "
                                 "crack_length_mm_change > 0", con=con).to_pylist()
    if not changes:
        surveyed = run_query(results, "SELECT count(*) FROM structure_changes", con=con)[0][0].as_py()
        report.section("Structure changes", note_html(
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
    report.section("Structure changes", f"<p>{grew} more cracks than at the previous survey.{more}</p>" + table_html(rows, ("structure", "cracked images",
                                                                             "crack length", "before", "after")))
