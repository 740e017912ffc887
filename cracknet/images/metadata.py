"""Where and how a photo was taken, from its header alone: GPS position and altitude, capture time, camera, focal
length, and the gimbal, altitude and range-finder fields DJI aircraft write into XMP.

    meta = photo_metadata(data)        # PhotoMetadata: None in every field the photo does not state sensibly
    meta.latitude, meta.longitude, meta.captured_at, meta.camera, meta.gimbal_pitch_deg, meta.distance_m

Nothing here decodes pixels: Pillow parses the header lazily. Metadata is a hint, never a reason to fail a
photo: an absent, malformed or out-of-range value (a zero-denominator rational, a NaN, a latitude of 200
degrees, a text field of a megabyte) reads as None, and reading never raises. The XMP packet is read only up
to ``MAX_XMP_BYTES`` (a JPEG segment holds at most 64 KiB; other formats could hold more).
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from PIL import ExifTags, Image

MAX_XMP_BYTES = 64 << 10
NADIR_TOLERANCE_DEG = 5.0  # a gimbal this close to -90 degrees looks straight down
RANGE_FINDER, ALTITUDE = "range finder", "altitude, nadir"
MAX_TEXT = 64  # characters kept of a text field (camera make and model)
# Plausible ranges: a value outside its range is treated as absent.
ALTITUDE_M = (-1_000.0, 20_000.0)
ANGLE_DEG = (-360.0, 360.0)
DISTANCE_M = (0.0, 5_000.0)  # a range finder's distance to the surface photographed
FOCAL_MM = (0.5, 2_000.0)
# DJI's XMP names (namespace drone-dji) and what each becomes.
DJI_FIELDS = {"RelativeAltitude": "relative_altitude_m", "GimbalPitchDegree": "gimbal_pitch_deg", "GimbalYawDegree": "gimbal_yaw_deg",
              "FlightYawDegree": "flight_yaw_deg", "LRFTargetDistance": "distance_m"}
_DJI = re.compile(rb"drone-dji:(\w{1,40})(?:=\"([^\"<>]{0,40})\"|>([^<>]{0,40})</drone-dji:\1>)")


@dataclass(frozen=True)
class PhotoMetadata:
    """What a photo's header says about where and how it was taken; None where it says nothing usable."""
    latitude: float | None = None          # degrees, WGS 84, north positive
    longitude: float | None = None         # degrees, WGS 84, east positive
    altitude_m: float | None = None        # GPS altitude above sea level (below: negative)
    captured_at: datetime | None = None    # the shutter's time, in UTC, where the photo states its offset
    captured_local: str | None = None      # the shutter's time as the camera's clock read it (ISO, no offset)
    camera: str | None = None              # make and model, e.g. "DJI FC6310"
    focal_length_mm: float | None = None
    focal_length_35mm: float | None = None
    width: int | None = None               # pixels as stored (before EXIF orientation)
    height: int | None = None
    relative_altitude_m: float | None = None  # DJI: above the take-off point
    gimbal_pitch_deg: float | None = None  # DJI: -90 looks straight down (nadir)
    gimbal_yaw_deg: float | None = None    # DJI: the camera's heading, degrees from north
    flight_yaw_deg: float | None = None    # DJI: the aircraft's heading
    distance_m: float | None = None        # DJI laser range finder: distance to the target surface

    def has_position(self) -> bool:
        return self.latitude is not None and self.longitude is not None

    def nadir(self) -> bool:
        """Whether the camera looked straight down (the only case where altitude is the distance to the surface)."""
        return self.gimbal_pitch_deg is not None and abs(self.gimbal_pitch_deg + 90.0) <= NADIR_TOLERANCE_DEG

    def distance(self) -> tuple[float | None, str | None]:
        """The camera's distance to the surface and where it comes from: the range finder's, else the height above
        the take-off point of a photo looking straight down; (None, None) where neither is known."""
        if self.distance_m is not None:
            return self.distance_m, RANGE_FINDER
        if self.relative_altitude_m is not None and self.relative_altitude_m > 0 and self.nadir():
            return self.relative_altitude_m, ALTITUDE
        return None, None

    def table_fields(self) -> dict[str, Any]:
        """What the results table keeps of it (``cracknet.table.schema.PLACE_COLUMNS``), JSON-safe."""
        distance, source = self.distance()
        return {"latitude": self.latitude, "longitude": self.longitude, "altitude_m": self.altitude_m,
                "captured_at": self.captured_at.isoformat() if self.captured_at else None, "camera": self.camera,
                "focal_length_mm": self.focal_length_mm, "gimbal_pitch_deg": self.gimbal_pitch_deg,
                "gimbal_yaw_deg": self.gimbal_yaw_deg, "distance_m": distance, "distance_source": source}


def photo_metadata(data: bytes) -> PhotoMetadata:
    """The metadata of an encoded photo (any format Pillow reads); every field None when none can be read."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return _read(img)
    except Exception:  # noqa: BLE001 - metadata is a hint: a photo whose header cannot be read has none
        return PhotoMetadata()


def _read(img: Image.Image) -> PhotoMetadata:
    exif = img.getexif()
    gps = _ifd(exif, ExifTags.IFD.GPSInfo)
    details = _ifd(exif, ExifTags.IFD.Exif)
    fields: dict[str, Any] = {"width": img.width, "height": img.height}
    fields["latitude"] = _degrees(gps.get(ExifTags.GPS.GPSLatitude), gps.get(ExifTags.GPS.GPSLatitudeRef), "S", 90)
    fields["longitude"] = _degrees(gps.get(ExifTags.GPS.GPSLongitude), gps.get(ExifTags.GPS.GPSLongitudeRef), "W",
                                   180)
    if fields["latitude"] is None or fields["longitude"] is None:
        fields["latitude"] = fields["longitude"] = None  # half a position is none
    altitude = _within(_number(gps.get(ExifTags.GPS.GPSAltitude)), ALTITUDE_M)
    below = gps.get(ExifTags.GPS.GPSAltitudeRef) in (1, b"\x01", "\x01")
    fields["altitude_m"] = -altitude if altitude is not None and below else altitude
    fields["captured_local"], fields["captured_at"] = _captured(
        details.get(ExifTags.Base.DateTimeOriginal) or exif.get(ExifTags.Base.DateTime),
        details.get(ExifTags.Base.OffsetTimeOriginal) or details.get(ExifTags.Base.OffsetTime))
    make, model = _text(exif.get(ExifTags.Base.Make)), _text(exif.get(ExifTags.Base.Model))
    fields["camera"] = (model if make and model and model.lower().startswith(make.lower())
                        else " ".join(part for part in (make, model) if part)) or None
    fields["focal_length_mm"] = _within(_number(details.get(ExifTags.Base.FocalLength)), FOCAL_MM)
    fields["focal_length_35mm"] = _within(_number(details.get(ExifTags.Base.FocalLengthIn35mmFilm)), FOCAL_MM)
    fields.update(_dji(img.info.get("xmp")))
    return PhotoMetadata(**fields)


def _ifd(exif: Image.Exif, which: int) -> dict:
    try:
        found = exif.get_ifd(which)
    except Exception:  # noqa: BLE001 - a damaged IFD offset
        return {}
    return found if isinstance(found, dict) else {}


def _number(value: Any) -> float | None:
    """A finite float from an EXIF number or rational (a zero denominator is no number)."""
    try:
        number = float(value)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _within(value: float | None, bounds: tuple[float, float]) -> float | None:
    return value if value is not None and bounds[0] <= value <= bounds[1] else None


def _degrees(dms: Any, ref: Any, negative: str, limit: float) -> float | None:
    """Degrees from EXIF's (degrees, minutes, seconds) and its N/S or E/W reference."""
    if not isinstance(dms, (tuple, list)) or not 1 <= len(dms) <= 3:
        return None
    parts = [_number(part) for part in dms]
    if any(part is None or part < 0 for part in parts):
        return None
    degrees = sum(part / 60 ** k for k, part in enumerate(parts))
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "replace")
    sign = -1.0 if isinstance(ref, str) and ref.strip().upper()[:1] == negative else 1.0
    return sign * degrees if degrees <= limit else None


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    text = "".join(c for c in value[:MAX_TEXT * 4] if c.isprintable()).strip().strip("\x00")
    return text[:MAX_TEXT] or None


def _captured(when: Any, offset: Any) -> tuple[str | None, datetime | None]:
    """(the camera's local time as ISO text, that time in UTC when the photo states its offset)."""
    text = _text(when)
    try:
        local = datetime.strptime(text or "", "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None, None
    match = re.fullmatch(r"([+-])(\d{2}):(\d{2})", _text(offset) or "")
    if not match or int(match[2]) > 14 or int(match[3]) >= 60:
        return local.isoformat(), None
    sign = 1 if match[1] == "+" else -1
    zone = timezone(sign * timedelta(hours=int(match[2]), minutes=int(match[3])))
    return local.isoformat(), local.replace(tzinfo=zone).astimezone(timezone.utc)


def _dji(xmp: Any) -> dict[str, float]:
    """DJI's XMP fields (attribute or element form), each a finite number in its plausible range."""
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8", "replace")
    if not isinstance(xmp, bytes):
        return {}
    found = {}
    for match in _DJI.finditer(xmp[:MAX_XMP_BYTES]):
        name = DJI_FIELDS.get(match[1].decode())
        if name is None or name in found:
            continue
        value = _number((match[2] or match[3] or b"").decode("ascii", "replace").strip())
        bounds = ANGLE_DEG if name.endswith("_deg") else DISTANCE_M if name == "distance_m" else ALTITUDE_M
        if name == "distance_m" and value == 0:
            value = None  # a range finder that found no target writes 0
        value = _within(value, bounds)
        if value is not None:
            found[name] = value
    return found


def ground_sampling_distance(sensor_width_mm: float, focal_length_mm: float, distance_m: float,
                             image_width_px: int) -> float:
    """Millimetres of surface per pixel for a camera square to the surface: sensor width x distance /
    (focal length x image width). 13.2 mm sensor, 8.8 mm lens, 10 m, 5472 px: 2.74 mm per pixel."""
    return sensor_width_mm * distance_m * 1000.0 / (focal_length_mm * image_width_px)
