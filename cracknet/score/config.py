"""The settings of a scoring run (``cracknet score``): each field is its flag, with help and range."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from cracknet.config import option
from cracknet.images.decoding import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, check_tile_size
from cracknet.measure.geometry import DEFAULT_WIDTH_CLASSES, parse_width_classes
from cracknet.numbers import LEASE_SECONDS, MM_PER_PIXEL, SHARE, Range, check_fields
from cracknet.score.alerts import check_webhook_url
from cracknet.storage.lease import DEFAULT_LEASE_SECONDS
from cracknet.table.sites import parse_structure_from


@dataclass(frozen=True)
class ScoreConfig:
    model: str = field(metadata={"help": "the model/ folder, the training output above it, or a registered "
                                         "version: models:/NAME@ALIAS, models:/NAME/VERSION"})
    input: str = field(metadata={"help": "images: a folder, s3://bucket/prefix, or a Parquet/CSV manifest of URIs"})
    output: str = field(metadata={"help": "the results table (Delta Lake): a folder or s3:// prefix"})
    input_prefix: Optional[str] = option(None, "images must lie under this location (default: the input folder, or "
                                             "a manifest's bucket on S3 / its folder on local disk)")
    batch_size: int = option(0, "tiles per model call (an image up to 1.5 tiles per side is one tile; default: 64, "
                              "or 8 in float32 on a CPU, where smaller calls are faster)", range=Range(0, 65_536))
    num_actors: int = option(0, "model actors (default: one per GPU, or one on a CPU-only cluster)", range=Range(0, 4096))
    use_gpu: bool = option(False, "one GPU per model actor even before GPU workers are up (autoscaling clusters); "
                                "by default GPUs are used when the cluster has them")
    tile_size: int = option(0, "tile side in source pixels for large images (default: the model's training images)",
                          range=Range(0, 16_384))
    tile_overlap: float = option(0.25, "overlap of neighbouring tiles, as a share of the tile side",
                               range=Range(0, 1, high_open=True))
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "images with more pixels are refused (decompression bombs); 16- and "
                                               "32-bit images count by the memory they need, as 8-bit RGB would",
                           range=Range(1, None))
    max_bytes: int = option(DEFAULT_MAX_BYTES, "files larger than this many bytes are refused by their size, unread",
                          range=Range(1, None))
    retry_errors: bool = option(False, "score again every image whose last attempt was an error row, permanent or not")
    fp32: bool = option(False, "score in float32 even where bf16 is fast (GPUs, CPUs with bf16 instructions)")
    compile: bool = option(False, "run the model under torch.compile: about a minute of compiling per actor, then "
                                "about 1.5x faster on CPUs with bf16 (pays from a few thousand images per actor); "
                                "little faster in float32")
    read_batch_size: int = option(64, "images per read-and-decode task (their tiles reach the model in packs of "
                                    "about 64 tiles, or --batch-size where larger)", range=Range(1, 65_536))
    rows_per_part: int = option(4096, "images per Parquet file of the results table", range=Range(1, 10_000_000))
    lease_seconds: float = option(DEFAULT_LEASE_SECONDS, "a run that stops renewing its lease on the output for this "
                                                       "long is presumed dead, and the next run takes the output over",
                                range=LEASE_SECONDS)
    mm_per_pixel: Optional[float] = option(None, "the photos' scale (ground sample distance) in millimetres per pixel: "
                                               "crack lengths and widths in mm, and severity classes (default: a "
                                               "manifest's column, else each photo's camera where it states its "
                                               "lens and distance, else unknown, so those are null)",
                                           range=MM_PER_PIXEL)
    camera_table: Optional[str] = option(None, "a CSV of camera,sensor_width_mm (the camera as its photos name it) for "
                                               "cameras not in cracknet's table, so their photos get a scale")
    width_classes: str = option(DEFAULT_WIDTH_CLASSES, "severity classes by crack width in mm, name:below_mm,...,name "
                                                     "(default: AASHTO MBEI defect 1130, reinforced concrete)")
    mask_gate: Optional[float] = option(None, "models with a mask decoder draw crack masks of the tiles at or above "
                                            "this crack probability (default: the model's threshold)", range=SHARE)
    masks: Optional[str] = option(None, "also write each cracked image's crack mask there, an 8-bit PNG at the "
                                      "photo's size (crack 255): a folder, s3:// prefix, or <output>/_masks")
    mlflow: Optional[str] = option(None, "the MLflow registry for a models:/NAME@ALIAS or models:/NAME/VERSION "
                                       "--model (default: MLFLOW_TRACKING_URI)")
    alert_webhook: Optional[str] = option(None, "POST the night's alerts here as one JSON message (Slack and Teams "
                                              "incoming webhooks take it); never fails the run (default: "
                                              "CRACKNET_ALERT_WEBHOOK)")
    drift_window: int = option(7, "monitoring compares a night with this many recent scoring runs", range=Range(1, 1000))
    drift_psi: float = option(0.25, "alert when the population-stability index of the crack probabilities, the "
                                  "brightness or the sharpness against recent nights exceeds this",
                            range=Range(0, 100, low_open=True))
    crack_rate_margin: float = option(0.05, "alert when the crack rate lies this far outside recent nights' range "
                                          "(beyond its own 99%% binomial interval)", range=Range(0, 1, high_open=True))
    max_error_rate: float = option(0.05, "alert when more than this share of the night's images are error rows",
                                 range=Range(0, 1, high_open=True))
    structure_growth: int = option(2, "alert when a structure this run surveyed has this many more cracked photos "
                                    "than just before, and a crack rate above the rate before (beyond its 95%% "
                                    "binomial interval)", range=Range(1, None))
    length_growth: float = option(0.5, "alert when a structure's crack length per photo grew by more than this share "
                                     "in a survey (models that draw masks)",
                                range=Range(0, 1000, low_open=True))
    structure_from: str = option("folder", "what makes a structure: folder (the folder a photo sits in), or gps:RADIUS_M "
                                         "(photos within RADIUS_M metres of a site, sites kept from night to night, "
                                         "for flights dumped into one folder)")
    ray_address: Optional[str] = option(None, "Ray cluster to use (default: RAY_ADDRESS, else a local Ray)")
    verbose: bool = option(False, "also show Ray's INFO logs and Ray Data's progress bars")

    def __post_init__(self):
        check_fields(self)  # every number finite and in its field's range
        parse_width_classes(self.width_classes)
        if self.alert_webhook is not None:
            check_webhook_url(self.alert_webhook)
        check_tile_size(self.tile_size)
        parse_structure_from(self.structure_from)
