"""The results table's schema: one home for its columns and their types, read by the writers (``results``,
``columns``) and everything that reads the table (the views, the report, the docs test).

One row per scored image; its tiles and cracks ride along as nested lists. Columns added after the first
release (``ADDED_COLUMNS``) are given to an older table on its next commit and read as null in its older rows.
"""

import pyarrow as pa

PARTITION = "run_date"
TILE = pa.struct([("tile_x", pa.int32()), ("tile_y", pa.int32()), ("tile_w", pa.int32()), ("tile_h", pa.int32()),
                  ("crack_probability", pa.float32())])
VERTEX = pa.struct([("x", pa.float32()), ("y", pa.float32()), ("width_px", pa.float32())])
CRACK = pa.struct([  # one crack of an image's mask (cracknet.measure.geometry.measure); *_mm null without a scale
    ("crack", pa.int32()),  # its number in the image, longest first
    ("length_px", pa.float32()), ("length_mm", pa.float32()),
    ("width_mean_px", pa.float32()), ("width_mean_mm", pa.float32()),
    ("width_max_px", pa.float32()), ("width_max_mm", pa.float32()),
    ("width_p95_px", pa.float32()), ("width_p95_mm", pa.float32()),
    ("severity", pa.string()),  # the width class of width_p95_mm; null without a scale
    ("orientation", pa.string()),  # transverse, longitudinal, diagonal or map
    ("junctions", pa.int32()), ("area_px", pa.int32()),
    ("bbox_x", pa.int32()), ("bbox_y", pa.int32()), ("bbox_w", pa.int32()), ("bbox_h", pa.int32()),
    ("paths", pa.list_(pa.list_(VERTEX))),  # simplified centre lines in photo pixels, a width at each vertex
])
FILE_SCHEMA = pa.schema([   # what each Parquet file holds; run_date lives in the path and the log (Delta's rule)
    ("image_uri", pa.string()),
    ("version", pa.string()),  # ETag on S3; size and mtime on local disk
    ("crack_probability", pa.float32()),  # null when error is set; the maximum over tiles when tiled
    ("is_crack", pa.bool_()),  # crack_probability >= the model's threshold
    ("tiles_scored", pa.int32()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("error", pa.string()),  # null when the image was scored
    ("model_id", pa.string()),
    ("run_id", pa.string()),
    ("scored_at", pa.timestamp("us", tz="UTC")),
    ("tiles", pa.list_(TILE)),  # the tiles of a tiled image; empty when it was scored whole, null on error
    ("error_kind", pa.string()),  # with error: permanent (about the file) or transient (tried again later)
    # Crack geometry, from models with a mask decoder (null from others, and on error rows):
    ("cracks", pa.list_(CRACK)),  # empty when no tile reached the mask gate
    ("crack_count", pa.int32()),
    ("crack_length_px", pa.float32()), ("crack_length_mm", pa.float32()),  # all its cracks together
    ("crack_width_max_px", pa.float32()), ("crack_width_max_mm", pa.float32()),
    ("severity", pa.string()),  # the worst of its cracks' classes
    ("mm_per_pixel", pa.float32()),  # the scale its millimetres come from; null: unknown, so no millimetres
    ("mask_uri", pa.string()),  # its 8-bit PNG crack mask (with --masks, where it has cracks)
    # Image statistics, for monitoring (cracknet.score.monitor): mean luma 0-255, variance of the grey Laplacian
    ("brightness", pa.float32()), ("sharpness", pa.float32()),
    # Where and how the photo was taken, from its own header (cracknet.images.metadata); null where it says nothing
    ("latitude", pa.float64()), ("longitude", pa.float64()),  # degrees, WGS 84
    ("altitude_m", pa.float32()),  # GPS altitude above sea level
    ("captured_at", pa.timestamp("us", tz="UTC")),  # where the photo states its clock's offset
    ("camera", pa.string()), ("focal_length_mm", pa.float32()),
    ("gimbal_pitch_deg", pa.float32()), ("gimbal_yaw_deg", pa.float32()),  # DJI XMP: -90 is straight down
    ("distance_m", pa.float32()),  # camera to surface
    ("distance_source", pa.string()),  # "range finder", or "altitude, nadir" (height above take-off, looking down)
    # With crack geometry: where mm_per_pixel came from (manifest, flag, or camera: <distance source>), and why
    # severity is null at that scale (too coarse to tell the first width class from the next)
    ("scale_source", pa.string()), ("scale_note", pa.string()),
])
SCHEMA = FILE_SCHEMA.append(pa.field(PARTITION, pa.date32()))
GEOMETRY_COLUMNS = ("cracks", "crack_count", "crack_length_px", "crack_length_mm", "crack_width_max_px",
                    "crack_width_max_mm", "severity", "mm_per_pixel", "mask_uri")
# Columns added since the first release: older tables get them on their next commit, readers see them as null.
IMAGE_STATISTICS = ("brightness", "sharpness")
PLACE_COLUMNS = ("latitude", "longitude", "altitude_m", "captured_at", "camera", "focal_length_mm", "gimbal_pitch_deg",
                 "gimbal_yaw_deg", "distance_m", "distance_source")
SCALE_COLUMNS = ("scale_source", "scale_note")
ADDED_COLUMNS = ("error_kind",) + GEOMETRY_COLUMNS + IMAGE_STATISTICS + PLACE_COLUMNS + SCALE_COLUMNS
KEYS = pa.schema([FILE_SCHEMA.field(name) for name in ("image_uri", "version", "model_id", "error", "error_kind")])
STATS_COLUMNS = ("image_uri", "version", "model_id", "run_id", "crack_probability", "tiles_scored")
