"""The report's map: where the survey's photos and findings lie, drawn as SVG from their own positions (no map
tiles, nothing fetched: the page still opens offline), over the whole survey and per structure, with the
structures' list linking to each one's findings.

Positions are those of the ``findings`` view (``cracknet.table.places``): a crack placed on the ground is drawn as
its line, any other finding as a dot at the photo's position, coloured by severity. The drawing is a local flat
projection (metres east and north of the survey's middle), good for the few kilometres a survey spans.
"""

from __future__ import annotations

import html
import math

from cracknet.measure.geometry import DEFAULT_WIDTH_CLASSES, parse_width_classes
from cracknet.report.page import Html, Report, note_html, table_html

MAX_PHOTOS = 5_000     # dots of photos on one map; beyond, a stable sample (by a hash of the URI)
MAX_FINDINGS = 2_000   # findings on one map, worst first
MAX_STRUCTURES = 12    # structures with a map of their own, most findings first
FINDINGS_LISTED = 15   # findings listed under each structure's map
METRES_PER_DEGREE = 111_320.0  # of latitude, near enough for drawing
PALETTE = ("#f1c40f", "#e67e22", "#c0392b", "#7b241c")  # narrowest class to widest
UNGRADED, PHOTO = "#8e44ad", "#95a5a6"


def places_section(report: Report, results: str) -> None:
    """The survey's map and one per structure, or a note that no photo states where it was taken."""
    from cracknet.table.query import connect, run_query

    con = connect(results)
    photos = run_query(results, f"""
        SELECT structure, image_uri, latitude, longitude, is_crack
        FROM current WHERE latitude IS NOT NULL AND error IS NULL ORDER BY hash(image_uri) LIMIT {MAX_PHOTOS}""",
                       con=con).to_pylist()
    if not photos:
        report.section("Where on the structure", note_html(
            "No scored photo states where it was taken (GPS position in its EXIF), so there is no map. Drone "
            "photos carry it; docs/places.md says what cracknet reads."))
        return
    classes = [c.name for c in parse_width_classes(DEFAULT_WIDTH_CLASSES)]
    order = " ".join(f"WHEN '{name}' THEN {rank}" for rank, name in enumerate(classes))
    findings = run_query(results, f"""
        SELECT * FROM findings WHERE latitude IS NOT NULL
        ORDER BY CASE severity {order} ELSE -1 END DESC, length_mm DESC NULLS LAST, image_uri, crack
        LIMIT {MAX_FINDINGS}""", con=con).to_pylist()
    counts = run_query(results, """
        SELECT structure, count(*) AS findings, count(*) FILTER (WHERE latitude IS NOT NULL) AS placed
        FROM findings GROUP BY 1""", con=con).to_pylist()
    colours = severity_colours(classes, findings)
    structures = _structures(photos, counts)
    body = (f"<p>{len(photos)} photos with a position{' (a sample)' if len(photos) == MAX_PHOTOS else ''} and "
            f"{len(findings)} findings placed; a crack placed on the ground is drawn as its line.</p>"
            + legend(colours) + svg_map(photos, findings, colours, 1000, 560)
            + table_html([(Html(f'<a href="#where-{i}">{html.escape(s["structure"])}</a>') if i < MAX_STRUCTURES
                           else s["structure"], s["photos"], s["findings"]) for i, s in enumerate(structures)],
                         ("structure", "photos placed", "findings")))
    for i, s in enumerate(structures[:MAX_STRUCTURES]):
        own = [f for f in findings if f["structure"] == s["structure"]]
        body += (f'<h3 id="where-{i}">{html.escape(s["structure"])}</h3>'
                 + svg_map([p for p in photos if p["structure"] == s["structure"]], own, colours, 700, 420)
                 + _findings_table(own[:FINDINGS_LISTED]))
    report.section("Where on the structure", body)


def _structures(photos: list[dict], counts: list[dict]) -> list[dict]:
    """Each structure with photos placed: how many, and its findings; most findings first."""
    found = {c["structure"]: c["findings"] for c in counts}
    placed: dict[str, int] = {}
    for p in photos:
        placed[p["structure"]] = placed.get(p["structure"], 0) + 1
    rows = [{"structure": name, "photos": n, "findings": found.get(name, 0)} for name, n in placed.items()]
    return sorted(rows, key=lambda r: (-r["findings"], r["structure"]))


def _findings_table(findings: list[dict]) -> str:
    rows = [(f["image_uri"], "" if f["crack"] is None else f["crack"], f["severity"] or "not graded",
             "" if f["length_mm"] is None else f"{f['length_mm']:.0f}",
             "" if f["width_p95_mm"] is None else f"{f['width_p95_mm']:.2f}",
             f"{f['latitude']:.7f}, {f['longitude']:.7f}", f["position_source"]) for f in findings]
    return table_html(rows, ("photo", "crack", "severity", "length mm", "width mm (p95)", "latitude, longitude",
                             "position of"))


def severity_colours(classes: list[str], findings: list[dict]) -> dict:
    """A colour per severity seen (the default classes' own, narrowest yellow to widest red; other names after
    them), and UNGRADED for none."""
    names = classes + sorted({f["severity"] for f in findings if f["severity"] and f["severity"] not in classes})
    return {**{name: PALETTE[min(i, len(PALETTE) - 1)] for i, name in enumerate(names)}, None: UNGRADED}


def legend(colours: dict) -> Html:
    items = [(PHOTO, "photo")] + [(c, name or "not graded") for name, c in colours.items()]
    return Html('<p class="note">' + " &nbsp; ".join(
        f'<span style="color:{c}">&#9679;</span> {html.escape(label)}' for c, label in items) + "</p>")


def svg_map(photos: list[dict], findings: list[dict], colours: dict, width: int, height: int) -> Html:
    """An SVG of photos (grey dots) and findings (lines or dots by severity), north up, with a scale bar."""
    points = [(p["longitude"], p["latitude"]) for p in photos] + [(f["longitude"], f["latitude"]) for f in findings]
    points += [(v["longitude"], v["latitude"]) for f in findings for path in f["line"] or [] for v in path]
    to_xy, px_per_m = projection(points, width, height)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" style="background:#fbfbfb;border:1px solid #ddd">']
    for p in photos:
        x, y = to_xy(p["longitude"], p["latitude"])
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{PHOTO}"><title>'
                     f'{html.escape(p["image_uri"])}</title></circle>')
    for f in reversed(findings):  # the worst drawn last, on top
        colour = colours.get(f["severity"], UNGRADED)
        title = html.escape(f"{f['image_uri']} crack {f['crack']}: {f['severity'] or 'not graded'}"
                            + ("" if f["length_mm"] is None else f", {f['length_mm']:.0f} mm"))
        for path in f["line"] or []:  # a crack on the ground: its line (a few pixels at a survey's scale) ...
            xy = " ".join("{:.1f},{:.1f}".format(*to_xy(v["longitude"], v["latitude"])) for v in path)
            parts.append(f'<polyline points="{xy}" fill="none" stroke="{colour}" stroke-width="2.5">'
                         f'<title>{title}</title></polyline>')
        x, y = to_xy(f["longitude"], f["latitude"])  # ... and a dot at its centre, so that it shows at any scale
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{3 if f["line"] else 5}" fill="{colour}" stroke="#333" '
                     f'stroke-width="0.5"><title>{title}</title></circle>')
    parts += _scale_bar(px_per_m, height) + [f'<text x="{width - 24}" y="24" font-size="14">N&#8593;</text>', "</svg>"]
    return Html("".join(parts))


def projection(points: list[tuple[float, float]], width: int, height: int, margin: int = 30):
    """(lon, lat) -> SVG (x, y) fitting ``points`` in the box, north up, equal metres both ways; and pixels per
    metre. A single point, or points within a metre, are drawn at a scale of a metre across the box."""
    lon0 = (min(p[0] for p in points) + max(p[0] for p in points)) / 2
    lat0 = (min(p[1] for p in points) + max(p[1] for p in points)) / 2
    shrink = math.cos(math.radians(lat0))
    east = [(lon - lon0) * shrink * METRES_PER_DEGREE for lon, _ in points]
    north = [(lat - lat0) * METRES_PER_DEGREE for _, lat in points]
    span_e, span_n = max(max(east) - min(east), 1.0), max(max(north) - min(north), 1.0)
    scale = min((width - 2 * margin) / span_e, (height - 2 * margin) / span_n)

    def to_xy(lon: float, lat: float) -> tuple[float, float]:
        return (width / 2 + (lon - lon0) * shrink * METRES_PER_DEGREE * scale,
                height / 2 - (lat - lat0) * METRES_PER_DEGREE * scale)

    return to_xy, scale


def _scale_bar(px_per_m: float, height: int) -> list[str]:
    """A bar of a round length (1, 2 or 5 times a power of ten metres) about 150 px long, bottom left."""
    metres = 150 / px_per_m
    power = 10 ** math.floor(math.log10(metres))
    length = max(step * power for step in (1, 2, 5) if step * power <= metres)
    label = f"{length:g} m" if length >= 1 else f"{length * 100:g} cm"
    x, y, w = 20, height - 20, length * px_per_m
    return [f'<line x1="{x}" y1="{y}" x2="{x + w:.1f}" y2="{y}" stroke="#333" stroke-width="3"/>',
            f'<text x="{x}" y="{y - 6}" font-size="12">{label}</text>']
