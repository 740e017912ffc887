"""Structures from positions, for photos whose folders do not name them (a drone flight dumped into one folder):
``cracknet score --structure-from gps:RADIUS_M``.

A *site* is a point on the map with a name, ``gps:<latitude>,<longitude>`` (5 decimals, about a metre). After
each run commits, every photo of the table that states its position and has no site yet joins the nearest site
within RADIUS_M metres; the photos left over seed new sites, densest place first (a grid of RADIUS_M cells: the
fullest cell's photos' mean position, moved to the mean of the leftover photos within RADIUS_M of it), each
taking the leftover photos within RADIUS_M, until none is left. A
site never moves and a photo keeps its first site, so a structure is the same from night to night, and a photo
scored again (another model, a new version) stays where it was. The radius is the size of a structure: about
its length for a bridge deck, not the spacing of the photos.

Kept beside the results table, in ``_structures/`` (which compaction leaves alone):

    sites.json                 {"radius_m": 50.0, "sites": [{"structure", "latitude", "longitude", "run_id"}]}
    assigned/<run_id>.parquet  image_uri, structure, run_id: the photos each run placed

``sites.json`` is written before the assignments that name its sites, so a run that dies between the two leaves
sites that the next run fills. The views (``cracknet.table.query``) give each image its site as ``structure``,
and the folder to images without one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from cracknet import storage
from cracknet.errors import CracknetError

FOLDER, GPS = "folder", "gps:"
FOLDER_NAME = "_structures"
ASSIGNED = pa.schema([("image_uri", pa.string()), ("structure", pa.string()), ("run_id", pa.string())])
EARTH_RADIUS_M = 6_371_008.8  # the mean radius: distances of a few hundred metres to a few centimetres
MAX_RADIUS_M = 10_000.0


@dataclass(frozen=True)
class Site:
    structure: str
    latitude: float
    longitude: float
    run_id: str = ""


def parse_structure_from(text: str) -> float | None:
    """The radius in metres of ``gps:RADIUS_M``; None for ``folder``; a sentence for anything else."""
    if text == FOLDER:
        return None
    try:
        radius = float(text[len(GPS):]) if text.startswith(GPS) else math.nan
    except ValueError:
        radius = math.nan
    if not 0 < radius <= MAX_RADIUS_M:  # NaN fails too
        raise CracknetError(f"--structure-from {text!r}: give folder, or gps:RADIUS_M with a radius of more than 0 "
                            f"and at most {MAX_RADIUS_M:g} metres (e.g. gps:50).")
    return radius


def site_name(latitude: float, longitude: float) -> str:
    return f"gps:{latitude:.5f},{longitude:.5f}"


def distances_m(lat: np.ndarray, lon: np.ndarray, lat0: float, lon0: float) -> np.ndarray:
    """Great-circle distances (haversine) from each (lat, lon) to (lat0, lon0)."""
    lat, lon = np.asarray(lat, dtype=float), np.asarray(lon, dtype=float)
    p, p0 = np.radians(lat), math.radians(lat0)
    h = np.sin((p - p0) / 2) ** 2 + np.cos(p) * math.cos(p0) * np.sin(np.radians(lon - lon0) / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(h, 0, 1)))


def assign(photos: list[tuple[str, float, float]], sites: list[Site], radius_m: float, run_id: str = "") \
        -> tuple[list[tuple[str, str]], list[Site]]:
    """(image_uri, structure) for each photo (image_uri, latitude, longitude), and the sites made for them: each
    joins the nearest site within ``radius_m``, the leftovers seed new ones (module docstring). Deterministic:
    the same photos and sites give the same answer in any order."""
    photos = sorted(photos)
    lat = np.array([p[1] for p in photos], dtype=float)
    lon = np.array([p[2] for p in photos], dtype=float)
    site_of: list[str | None] = [None] * len(photos)
    _nearest(lat, lon, sites, radius_m, site_of)
    made: list[Site] = []
    while True:
        left = np.array([i for i, s in enumerate(site_of) if s is None], dtype=int)
        if not len(left):
            break
        first = _densest(lat[left], lon[left], radius_m)
        around = left[distances_m(lat[left], lon[left], *first) <= radius_m]
        seed = (float(lat[around].mean()), float(lon[around].mean())) if len(around) else first
        site = Site(site_name(*seed), round(seed[0], 7), round(seed[1], 7), run_id)
        near = left[distances_m(lat[left], lon[left], *seed) <= radius_m]
        for i in near if len(near) else left[:1]:  # the seed's own photos lie within; rounding must not stall
            site_of[i] = site.structure
        made.append(site)
    return [(p[0], s) for p, s in zip(photos, site_of)], made


def _nearest(lat: np.ndarray, lon: np.ndarray, sites: list[Site], radius_m: float, site_of: list) -> None:
    best = np.full(len(lat), np.inf)
    for site in sites:
        d = distances_m(lat, lon, site.latitude, site.longitude)
        closer = (d <= radius_m) & (d < best)
        best[closer] = d[closer]
        for i in np.flatnonzero(closer):
            site_of[i] = site.structure


def _densest(lat: np.ndarray, lon: np.ndarray, radius_m: float) -> tuple[float, float]:
    """The mean position of the photos in the fullest grid cell of ``radius_m`` (ties: the cell first in order)."""
    cell_deg = radius_m / (EARTH_RADIUS_M * math.pi / 180)
    rows = np.floor(lat / cell_deg).astype(np.int64)
    cols = np.floor(lon * np.cos(np.radians(lat)) / cell_deg).astype(np.int64)
    cells, inverse, counts = np.unique(np.stack([rows, cols], axis=1), axis=0, return_inverse=True,
                                       return_counts=True)
    inside = inverse.ravel() == int(np.argmax(counts))
    return float(lat[inside].mean()), float(lon[inside].mean())


# ---------------------------------------------------------------------------------------------------
# Beside the table


def read_sites(output: str) -> tuple[float | None, list[Site]]:
    """The radius the table's sites were drawn with (None: none yet) and the sites."""
    uri = storage.join(output, FOLDER_NAME, "sites.json")
    if not storage.exists(uri):
        return None, []
    kept = json.loads(storage.read_bytes(uri))
    return float(kept["radius_m"]), [Site(**s) for s in kept["sites"]]


def check_radius(output: str, radius_m: float | None) -> None:
    """A run may not redraw the table's sites with another radius: its structures would change under it."""
    kept, _ = read_sites(output) if radius_m is not None else (None, [])
    if kept is not None and kept != radius_m:
        raise CracknetError(f"--structure-from gps:{radius_m:g} differs from the {kept:g} m the sites of {output} were "
                            f"drawn with; give gps:{kept:g}, or a new output to draw them again.")


def assigned_files(output: str) -> list[str]:
    folder = storage.join(output, FOLDER_NAME, "assigned")
    return sorted(f for f in storage.list_files(folder) if f.endswith(".parquet")) if storage.exists(folder) else []


def assigned(output: str):
    """Every run's assignments as one dataset (an empty table where none were made)."""
    import pyarrow.dataset as ds

    files = assigned_files(output)
    if not files:
        return ASSIGNED.empty_table()
    fs, _ = storage.resolve(output)
    return ds.dataset([storage.resolve(f)[1] for f in files], schema=ASSIGNED, format="parquet", filesystem=fs)


def unplaced_sql() -> str:
    """The photos with a position and no site yet (each at its newest row's position), for ``place_new``."""
    return """SELECT image_uri, arg_max(latitude, scored_at) AS latitude, arg_max(longitude, scored_at) AS longitude
              FROM results WHERE latitude IS NOT NULL AND longitude IS NOT NULL AND error IS NULL
                AND image_uri NOT IN (SELECT image_uri FROM site_rows)
              GROUP BY image_uri"""


def place_new(output: str, radius_m: float, run_id: str, photos: list[tuple[str, float, float]]) -> dict:
    """Give ``photos`` (those with a position and no site yet) their sites and keep both; returns counts."""
    import io

    import pyarrow.parquet as pq

    if not photos:
        return {"placed": 0, "new_sites": 0}
    _, sites = read_sites(output)
    pairs, made = assign(photos, sites, radius_m, run_id)
    if made:
        kept = {"radius_m": radius_m, "sites": [s.__dict__ for s in sites + made]}
        storage.write_bytes(storage.join(output, FOLDER_NAME, "sites.json"), json.dumps(kept, indent=1).encode())
    table = pa.table({"image_uri": [u for u, _ in pairs], "structure": [s for _, s in pairs],
                      "run_id": [run_id] * len(pairs)}, schema=ASSIGNED)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(storage.join(output, FOLDER_NAME, "assigned", f"{run_id}.parquet"), buffer.getvalue())
    return {"placed": len(pairs), "new_sites": len(made)}
