"""A photo's scale (millimetres of surface per pixel) and where it came from: the manifest, the run's flag, or the
camera itself (the ground sampling distance from its sensor, lens and distance to the surface).

    cameras = camera_table(None)                     # the built-in survey cameras; or a CSV of your own
    mm, source = scale_of(meta.table_fields(), meta.width, meta.height, manifest=None, flag=None, cameras=cameras)
    why = too_coarse(mm, parse_width_classes(DEFAULT_WIDTH_CLASSES))   # None, or why severity cannot be graded

The ground sampling distance (GSD) of a camera square to the surface is sensor width x distance / (focal length
x image width): a 13.2 mm sensor behind an 8.8 mm lens, 10 m away, 5,472 px across, sees 2.74 mm in a pixel.
The distance is the laser range finder's where the photo carries one, else the altitude above the take-off
point for a photo looking straight down (``PhotoMetadata.distance``); a photo at an angle has no single scale,
and gets none from the camera.
"""

from __future__ import annotations

import csv
import io
import math

from cracknet.errors import CracknetError
from cracknet.images.metadata import ground_sampling_distance
from cracknet.measure.geometry import WidthClass

# Sensor widths (mm) of common survey cameras, by the make and model their photos write.
SENSOR_WIDTH_MM = {
    "DJI FC6310": 13.2,    # Phantom 4 Pro (1")
    "DJI FC6310S": 13.2,   # Phantom 4 Pro V2.0
    "DJI FC6310R": 13.2,   # Phantom 4 RTK
    "DJI L1D-20c": 13.2,   # Mavic 2 Pro (Hasselblad, 1")
    "DJI FC220": 6.17,     # Mavic Pro (1/2.3")
    "DJI FC330": 6.17,     # Phantom 4 (1/2.3")
    "DJI ZenmuseP1": 35.9,  # Zenmuse P1 (full frame)
}
MANIFEST, FLAG = "manifest", "flag"  # the camera's GSD is "camera: " and its distance's source


def camera_table(text: str | None) -> dict[str, float]:
    """The built-in sensor widths, updated from a CSV (``camera,sensor_width_mm`` per line, the camera as its
    photos name it: make and model) where one is given; a bad line is refused with its number."""
    table = dict(SENSOR_WIDTH_MM)
    if not text:
        return table
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or row[0].strip().lower() == "camera" or row[0].lstrip().startswith("#"):
            continue
        try:
            width = float(row[1])
        except (IndexError, ValueError):
            width = math.nan
        if len(row) != 2 or not row[0].strip() or not 0.5 <= width <= 100:
            raise CracknetError(f"Line {number} of the camera table is not camera,sensor_width_mm with a width of "
                                f"0.5 to 100 mm: {','.join(row)[:80]!r}.")
        table[row[0].strip()] = width
    return table


def scale_of(photo: dict, width: int, height: int, manifest: float | None, flag: float | None,
             cameras: dict[str, float]) -> tuple[float | None, str | None]:
    """(mm per pixel, its source) of a photo of ``width`` x ``height`` pixels: the manifest's, else the run's
    flag, else the camera's GSD where ``photo`` (``PhotoMetadata.table_fields``) gives a known camera, its focal
    length and a distance; (None, None) where nothing gives one."""
    if manifest is not None:
        return manifest, MANIFEST
    if flag is not None:
        return flag, FLAG
    sensor = cameras.get(photo.get("camera") or "")
    focal, distance = photo.get("focal_length_mm"), photo.get("distance_m")
    if sensor is None or not focal or not distance or not width:
        return None, None
    # The sensor's width lies along the image's longer side as stored.
    return (ground_sampling_distance(sensor, focal, distance, max(width, height or 0)),
            f"camera: {photo.get('distance_source')}")


def too_coarse(mm_per_pixel: float | None, classes: tuple[WidthClass, ...]) -> str | None:
    """Why a photo's cracks cannot be graded at its scale, or None where they can: a crack narrower than a pixel
    is measured as a pixel wide, so a scale coarser than the first class's bound cannot tell that class from
    the next."""
    first = classes[0]
    if mm_per_pixel is None or first.below_mm is None or mm_per_pixel <= first.below_mm:
        return None
    return (f"{mm_per_pixel:.2f} mm per pixel is coarser than the {first.name} bound of {first.below_mm:g} mm: a "
            f"crack under {mm_per_pixel:.2f} mm reads as one pixel wide, so its class cannot be told; photograph "
            "closer or with a longer lens")
