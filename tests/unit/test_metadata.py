"""Where and how a photo was taken, read from headers the tests write with known values: EXIF GPS, time, camera
and focal length, and DJI-style XMP; absent, malformed and hostile metadata reads as None and never raises."""

import io
import math
import os
from datetime import datetime, timezone

import pytest
from helpers import DRONE_BASE, DRONE_DETAILS, DRONE_GPS, dji_xmp, jpeg
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image, PngImagePlugin, TiffImagePlugin

from cracknet.images.metadata import MAX_XMP_BYTES, PhotoMetadata, ground_sampling_distance, photo_metadata

EXAMPLES = int(os.environ.get("CRACKNET_EXAMPLES", "200"))


def test_a_drone_photo_says_where_when_and_how_it_was_taken():
    data = jpeg(DRONE_GPS, DRONE_DETAILS, DRONE_BASE, dji_xmp(RelativeAltitude="+10.20", GimbalPitchDegree="-90.00",
                                                              GimbalYawDegree="+45.50", FlightYawDegree="+44.00"))
    meta = photo_metadata(data)
    assert meta.latitude == pytest.approx(47 + 22 / 60 + 12.34 / 3600, abs=1e-9)
    assert meta.longitude == pytest.approx(-(8 + 32 / 60 + 5.5 / 3600), abs=1e-9)  # west is negative
    assert meta.has_position() and meta.altitude_m == pytest.approx(512.25)
    assert meta.captured_at == datetime(2026, 11, 23, 9, 15, 30, tzinfo=timezone.utc)
    assert meta.captured_local == "2026-11-23T10:15:30"
    assert (meta.camera, meta.focal_length_mm, meta.focal_length_35mm) == ("DJI FC6310", 8.8, 24.0)
    assert (meta.width, meta.height) == (64, 48)
    assert (meta.relative_altitude_m, meta.gimbal_pitch_deg, meta.gimbal_yaw_deg, meta.flight_yaw_deg) == \
        (10.2, -90.0, 45.5, 44.0)
    assert meta.distance_m == 12.5  # the range finder's element form


def test_a_photo_without_metadata_has_none_and_a_time_without_offset_stays_local():
    meta = photo_metadata(jpeg())
    assert meta == PhotoMetadata(width=64, height=48)
    meta = photo_metadata(jpeg(details={ExifTags.Base.DateTimeOriginal: "2026:11:23 10:15:30"},
                               base={ExifTags.Base.Make: "Canon", ExifTags.Base.Model: "Canon EOS R5"}))
    assert meta.captured_local == "2026-11-23T10:15:30" and meta.captured_at is None
    assert meta.camera == "Canon EOS R5"  # the make is not repeated
    below = photo_metadata(jpeg({**DRONE_GPS, ExifTags.GPS.GPSAltitudeRef: b"\x01"}))
    assert below.altitude_m == pytest.approx(-512.25)


@pytest.mark.parametrize("gps, details, xmp", [
    ({**DRONE_GPS, ExifTags.GPS.GPSLatitude: (TiffImagePlugin.IFDRational(1, 0), 0.0, 0.0)}, {}, None),
    ({**DRONE_GPS, ExifTags.GPS.GPSLatitude: (TiffImagePlugin.IFDRational(0, 0), 0.0, 0.0)}, {}, None),  # NaN
    ({**DRONE_GPS, ExifTags.GPS.GPSLatitude: (200.0, 0.0, 0.0)}, {}, None),
    ({**DRONE_GPS, ExifTags.GPS.GPSLongitude: (8.0, 32.0, 5.5, 1.0)}, {}, None),  # four parts
    ({}, {ExifTags.Base.FocalLength: -3.0, ExifTags.Base.DateTimeOriginal: "2026:13:45 99:00:00"}, None),
    ({}, {}, dji_xmp(GimbalPitchDegree="nan", GimbalYawDegree="1e309", RelativeAltitude="<script>")),
])
def test_malformed_metadata_reads_as_none_and_never_fails_the_photo(gps, details, xmp):
    meta = photo_metadata(jpeg(gps, details, xmp=xmp))
    assert meta.latitude is None and meta.longitude is None  # half a position is none
    assert meta.focal_length_mm is None and meta.captured_local is None
    assert meta.gimbal_pitch_deg is None and meta.gimbal_yaw_deg is None and meta.relative_altitude_m is None
    assert (meta.width, meta.height) == (64, 48)


def test_an_xmp_packet_is_read_only_up_to_its_bound():
    def png(xmp: str) -> bytes:
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", xmp)
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buffer, "PNG", pnginfo=info)
        return buffer.getvalue()

    near, far = 'drone-dji:GimbalPitchDegree="-90"', 'drone-dji:GimbalYawDegree="12"'
    meta = photo_metadata(png(near + " " * (MAX_XMP_BYTES * 2) + far))
    assert meta.gimbal_pitch_deg == -90.0 and meta.gimbal_yaw_deg is None


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.binary(max_size=2048))
def test_no_bytes_make_reading_metadata_raise(data):
    meta = photo_metadata(data)
    for value in vars(meta).values():
        assert value is None or not isinstance(value, float) or math.isfinite(value)


def test_the_ground_sampling_distance_of_a_nadir_photo():
    # A 1" sensor (13.2 mm wide) behind an 8.8 mm lens, 10 m above the deck, 5472 px across: 2.74 mm a pixel.
    assert ground_sampling_distance(13.2, 8.8, 10.0, 5472) == pytest.approx(2.741, abs=1e-3)
    assert ground_sampling_distance(13.2, 8.8, 1.5, 5472) == pytest.approx(0.411, abs=1e-3)


def test_the_scale_comes_from_the_manifest_then_the_flag_then_the_camera():
    from cracknet.images.scale import FLAG, MANIFEST, camera_table, scale_of, too_coarse
    from cracknet.measure.geometry import DEFAULT_WIDTH_CLASSES, parse_width_classes

    cameras = camera_table(None)
    drone = PhotoMetadata(camera="DJI FC6310", focal_length_mm=8.8, width=5472, height=3648,
                          relative_altitude_m=10.0, gimbal_pitch_deg=-89.0)
    assert scale_of(drone.table_fields(), drone.width, drone.height, 0.2, 0.5, cameras) == (0.2, MANIFEST)
    assert scale_of(drone.table_fields(), drone.width, drone.height, None, 0.5, cameras) == (0.5, FLAG)
    mm, source = scale_of(drone.table_fields(), drone.width, drone.height, None, None, cameras)
    assert source == "camera: altitude, nadir" and mm == pytest.approx(13.2 * 10_000 / (8.8 * 5472))
    ranged = PhotoMetadata(**{**vars(drone), "distance_m": 1.5, "gimbal_pitch_deg": -30.0})
    mm, source = scale_of(ranged.table_fields(), ranged.width, ranged.height, None, None, cameras)
    assert source == "camera: range finder" and mm == pytest.approx(0.411, abs=1e-3)
    oblique = PhotoMetadata(**{**vars(drone), "gimbal_pitch_deg": -30.0})
    assert not oblique.nadir() and scale_of(oblique.table_fields(), oblique.width, oblique.height, None, None, cameras) == (None, None)  # altitude is not distance
    unknown = PhotoMetadata(**{**vars(drone), "camera": "ACME Cam 1"})
    assert scale_of(unknown.table_fields(), unknown.width, unknown.height, None, None, cameras) == (None, None)
    assert scale_of(unknown.table_fields(), unknown.width, unknown.height, None, None, camera_table("camera,sensor_width_mm\nACME Cam 1,13.2\n"))[1] == \
        "camera: altitude, nadir"

    classes = parse_width_classes(DEFAULT_WIDTH_CLASSES)
    assert too_coarse(0.25, classes) is None and too_coarse(None, classes) is None
    assert "coarser than the insignificant bound of 0.3 mm" in too_coarse(2.74, classes)


@pytest.mark.parametrize("text", ["ACME,wide\n", "ACME\n", "ACME,0\n", "ACME,13.2,extra\n", ",13.2\n"])
def test_a_bad_camera_table_line_is_refused_with_its_number(text):
    from cracknet.errors import CracknetError
    from cracknet.images.scale import camera_table

    with pytest.raises(CracknetError, match="Line 2 of the camera table"):
        camera_table("camera,sensor_width_mm\n" + text)


def test_the_demo_flight_tags_photos_as_a_nadir_survey_along_the_deck(tmp_path):
    from PIL import Image

    from cracknet.demo.flight import DECK_START, HEADING_DEG, SPACING_M, geotag
    from cracknet.table.sites import distances_m

    for k in range(3):
        Image.new("RGB", (32, 24), (100 + k, 100, 100)).save(tmp_path / f"{k}.jpg")
    assert geotag(str(tmp_path)) == 3
    metas = [photo_metadata((tmp_path / f"{k}.jpg").read_bytes()) for k in range(3)]
    assert all(m.nadir() and m.gimbal_yaw_deg == HEADING_DEG and m.camera == "DJI FC6310" for m in metas)
    assert (metas[0].latitude, metas[0].longitude) == pytest.approx(DECK_START, abs=1e-7)
    steps = [distances_m([b.latitude], [b.longitude], a.latitude, a.longitude)[0] for a, b in zip(metas, metas[1:])]
    assert steps == pytest.approx([SPACING_M] * 2, abs=0.02)
