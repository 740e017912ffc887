"""A drone flight for the demo: the survey's generated photos tagged as a nadir survey flight along a bridge deck
writes them (EXIF GPS position, capture time, and DJI's XMP gimbal pitch and yaw), so that scoring places their
cracks on the map, the report draws it and ``cracknet export`` has something to export.

The deck and its position are invented; the photos are the generated ones, re-saved with the tags.
"""

from __future__ import annotations

import io
import math

from PIL import ExifTags, Image

from cracknet import storage

DECK_START = (47.0, 8.0)  # degrees north, east: the first photo
HEADING_DEG = 30.0        # the flight's (and the camera's top's) direction, clockwise from north
SPACING_M = 2.5           # between photos, along the deck
METRES_PER_DEGREE = 111_320.0


def along(start: tuple[float, float], heading_deg: float, metres: float) -> tuple[float, float]:
    """The point ``metres`` from ``start`` along ``heading_deg`` (a flat approximation, plenty for a deck)."""
    north = metres * math.cos(math.radians(heading_deg))
    east = metres * math.sin(math.radians(heading_deg))
    return (start[0] + north / METRES_PER_DEGREE,
            start[1] + east / (METRES_PER_DEGREE * math.cos(math.radians(start[0]))))


def tagged(image: Image.Image, latitude: float, longitude: float, heading_deg: float, taken: str) -> bytes:
    """``image`` as a JPEG carrying what a DJI survey photo looking straight down carries."""
    exif = Image.Exif()
    exif[ExifTags.Base.Make], exif[ExifTags.Base.Model] = "DJI", "FC6310"
    exif.get_ifd(ExifTags.IFD.GPSInfo).update({
        ExifTags.GPS.GPSLatitudeRef: "N" if latitude >= 0 else "S", ExifTags.GPS.GPSLatitude: _dms(latitude),
        ExifTags.GPS.GPSLongitudeRef: "E" if longitude >= 0 else "W", ExifTags.GPS.GPSLongitude: _dms(longitude)})
    exif.get_ifd(ExifTags.IFD.Exif).update({ExifTags.Base.DateTimeOriginal: taken,
                                             ExifTags.Base.OffsetTimeOriginal: "+00:00"})
    xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           '<rdf:Description xmlns:drone-dji="http://www.dji.com/drone-dji/1.0/" '
           f'drone-dji:GimbalPitchDegree="-90.0" drone-dji:GimbalYawDegree="{heading_deg:+.1f}" '
           f'drone-dji:FlightYawDegree="{heading_deg:+.1f}"/></rdf:RDF></x:xmpmeta>')
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=95, exif=exif, xmp=xmp.encode())
    return buffer.getvalue()


def _dms(degrees: float) -> tuple[float, float, float]:
    degrees = abs(degrees)
    whole, minutes = int(degrees), (degrees - int(degrees)) * 60
    return float(whole), float(int(minutes)), round((minutes - int(minutes)) * 60, 4)


def geotag(folder: str, start: tuple[float, float] = DECK_START, heading_deg: float = HEADING_DEG,
           spacing_m: float = SPACING_M) -> int:
    """Tag every JPEG under ``folder``, in name order, as a photo ``spacing_m`` further along the deck; returns how
    many were tagged."""
    photos = sorted(uri for uri in storage.list_files(folder) if uri.lower().endswith((".jpg", ".jpeg")))
    for k, uri in enumerate(photos):
        latitude, longitude = along(start, heading_deg, k * spacing_m)
        with Image.open(io.BytesIO(storage.read_bytes(uri))) as image:
            storage.write_bytes(uri, tagged(image, latitude, longitude, heading_deg,
                                            f"2026:11:23 10:{k // 60:02d}:{k % 60:02d}"))
    return len(photos)
