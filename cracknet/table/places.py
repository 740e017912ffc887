"""Where on the ground each finding lies: SQL macros that carry a photo's pixels to longitude and latitude, and the
``findings`` view built on them (``cracknet.table.query`` defines both on every connection).

A photo has a ground frame when it looked straight down (gimbal pitch within ``NADIR_TOLERANCE_DEG`` of -90),
states its position and heading (gimbal yaw, degrees clockwise from north) and has a scale (``mm_per_pixel``).
Its position is then the ground under the photo's centre, the photo's top points along the heading, and a pixel
(x, y) lies

    east  = ( dx cos(yaw) - dy sin(yaw)) * scale        dx = x - (width - 1) / 2
    north = (-dx sin(yaw) - dy cos(yaw)) * scale        dy = y - (height - 1) / 2   (y grows down the photo)

metres from it, on the WGS 84 ellipsoid's tangent plane: latitude + north / M, longitude + east / (N cos lat), with
M and N the meridian and prime-vertical radii of curvature at the photo's latitude. Over a photo's footprint (tens
of metres) the plane's error is far below a millimetre; the position's own error (a few metres for GPS, a few
centimetres for RTK) is what bounds the result. Pixels are those of the photo as scored (after its EXIF
orientation), so the heading is taken as that of the photo's top as shown: what drones write (orientation 1).
"""

from cracknet.images.metadata import NADIR_TOLERANCE_DEG

# WGS 84: semi-major axis (m) and first eccentricity squared.
WGS84_A, WGS84_E2 = 6_378_137.0, 0.00669437999014

MACROS = f"""
CREATE MACRO meridian_radius(lat) AS
    {WGS84_A} * (1 - {WGS84_E2}) / pow(1 - {WGS84_E2} * pow(sin(radians(lat)), 2), 1.5);
CREATE MACRO normal_radius(lat) AS {WGS84_A} / sqrt(1 - {WGS84_E2} * pow(sin(radians(lat)), 2));
CREATE MACRO ground_east(x, y, w, h, mm, yaw) AS
    ((x - (w - 1) / 2.0) * cos(radians(yaw)) - (y - (h - 1) / 2.0) * sin(radians(yaw))) * mm / 1000.0;
CREATE MACRO ground_north(x, y, w, h, mm, yaw) AS
    (-(x - (w - 1) / 2.0) * sin(radians(yaw)) - (y - (h - 1) / 2.0) * cos(radians(yaw))) * mm / 1000.0;
CREATE MACRO pixel_latitude(x, y, w, h, mm, yaw, lat) AS
    lat + degrees(ground_north(x, y, w, h, mm, yaw) / meridian_radius(lat));
CREATE MACRO pixel_longitude(x, y, w, h, mm, yaw, lat, lon) AS
    lon + degrees(ground_east(x, y, w, h, mm, yaw) / (normal_radius(lat) * cos(radians(lat))));
CREATE MACRO grounded(pitch, lat, lon, yaw, mm, w, h) AS
    abs(pitch + 90) <= {NADIR_TOLERANCE_DEG} AND lat IS NOT NULL AND lon IS NOT NULL AND yaw IS NOT NULL
    AND mm > 0 AND w > 0 AND h > 0;
"""

# The findings: one row per crack of a current image (models with a mask decoder), and one per current image
# judged cracked with no crack drawn (a classifier's verdict, or a mask that found none).
FINDINGS = """
CREATE VIEW findings AS
    SELECT c.structure, c.image_uri, c.crack, c.severity, c.length_mm, c.width_p95_mm, c.width_max_mm,
           c.orientation, i.crack_probability,
           CASE WHEN g THEN pixel_latitude(cx, cy, i.width, i.height, i.mm_per_pixel, i.gimbal_yaw_deg, i.latitude)
                ELSE i.latitude END AS latitude,
           CASE WHEN g THEN pixel_longitude(cx, cy, i.width, i.height, i.mm_per_pixel, i.gimbal_yaw_deg,
                                            i.latitude, i.longitude)
                ELSE i.longitude END AS longitude,
           CASE WHEN g THEN 'crack' WHEN i.latitude IS NOT NULL THEN 'photo' END AS position_source,
           CASE WHEN g THEN list_transform(c.paths, lambda p: list_transform(p, lambda v: {
                'longitude': pixel_longitude(v.x, v.y, i.width, i.height, i.mm_per_pixel, i.gimbal_yaw_deg,
                                             i.latitude, i.longitude),
                'latitude': pixel_latitude(v.x, v.y, i.width, i.height, i.mm_per_pixel, i.gimbal_yaw_deg,
                                           i.latitude)})) END AS line,
           i.mm_per_pixel, i.scale_source, i.captured_at, c.scored_at, c.run_id, c.model_id, c.mask_uri
    FROM (SELECT *, bbox_x + (bbox_w - 1) / 2.0 AS cx, bbox_y + (bbox_h - 1) / 2.0 AS cy FROM cracks) c
    JOIN (SELECT *, coalesce(grounded(gimbal_pitch_deg, latitude, longitude, gimbal_yaw_deg, mm_per_pixel, width,
                                      height), false) AS g FROM current) i USING (image_uri, run_id)
    UNION ALL BY NAME
    SELECT structure, image_uri, NULL::INTEGER AS crack, severity,
           crack_length_mm AS length_mm, NULL::FLOAT AS width_p95_mm, crack_width_max_mm AS width_max_mm,
           NULL AS orientation, crack_probability, latitude, longitude,
           CASE WHEN latitude IS NOT NULL THEN 'photo' END AS position_source, NULL AS line,
           mm_per_pixel, scale_source, captured_at, scored_at, run_id, model_id, mask_uri
    FROM current WHERE is_crack AND coalesce(crack_count, 0) = 0;
"""

SQL = MACROS + FINDINGS
