"""The one preprocessing definition shared by training, evaluation and scoring.

Decoding (bytes -> RGB uint8 array at the model's scale) runs on CPU workers:

    decode -> apply EXIF orientation -> RGB -> resize to (S, S) -> uint8 (S, S, 3)

The tensor preset runs where the model runs (on the GPU when there is one):

    eval_preset:  uint8 (N, S, S, 3) -> float (N, 3, S, S), normalised

Training's preset (``cracknet.images.augmentation.train_preset``) adds augmentation in between and is built
from the same ``Preprocessing``, so training and scoring can never disagree about size or normalisation.
Large photos are cut into overlapping tiles here too (``tile_boxes``, ``decode_tiles``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cracknet.errors import CracknetError

if TYPE_CHECKING:  # torch is imported where tensors are made, so reading a card needs none
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Well above a 48 MP survey photo, far below a decompression bomb.
DEFAULT_MAX_PIXELS = 150_000_000
# Well above a 48 MP photo as an uncompressed 16-bit TIFF (~290 MB).
DEFAULT_MAX_BYTES = 512 << 20
# Bytes per pixel of each PIL mode as stored once decoded; what decoding costs beyond that is counted in
# ``decoding_bytes``.
MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2,
              "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3, "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4, "I": 4, "F": 4}

# We check the pixel count ourselves (with a clear message), so PIL's own
# warning threshold must not fire first.
Image.MAX_IMAGE_PIXELS = None


class ImageError(CracknetError):
    """An input file that cannot be turned into a model input."""


@dataclass(frozen=True)
class Preprocessing:
    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES  # files above this are refused by their size, before they are read

    def __post_init__(self):
        if not 16 <= self.image_size <= 4096:
            raise CracknetError(f"Image size must be between 16 and 4096 pixels, got {self.image_size}.")


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an encoded image lazily (header only), refusing empty files and bombs."""
    if not data:
        raise ImageError("the file is empty")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("the file is not a recognised image") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"the image header is unreadable ({exc})") from None
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError(f"{width}x{height} pixels exceeds the limit of {max_pixels} pixels")
    need, limit = decoding_bytes(img), max_pixels * decoding_bytes_per_pixel("RGB")
    if need > limit:
        raise ImageError(f"{width}x{height} pixels in mode {img.mode} would take {need / 2**20:.0f} MiB to decode, "
                         f"more than the {limit / 2**20:.0f} MiB that the limit of {max_pixels} 8-bit RGB pixels "
                         "allows")
    return img


def decoding_bytes_per_pixel(mode: str) -> int:
    """Peak bytes per pixel of decoding an image of ``mode`` into 8-bit RGB: the decoded image, the working copies
    of modes converted through NumPy (16 and 32 bits), and the RGB result."""
    stored = MODE_BYTES.get(mode, 8)  # an unknown mode is counted as the deepest
    working = stored + 2 if mode.startswith(("I", "F")) else 0  # the array, its 8-bit copy and that as an image
    return stored + working + 3


def decoding_bytes(img: Image.Image) -> int:
    """What decoding ``img`` (its first frame, the only one read) costs at most, judged from its header."""
    width, height = img.size
    return width * height * decoding_bytes_per_pixel(img.mode)


def to_rgb(img: Image.Image) -> Image.Image:
    """Apply EXIF orientation and convert any mode (L, P, RGBA, CMYK, 16-bit) to 8-bit RGB."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16/32-bit greyscale: scale the full range down to 8 bits, a band of rows at a time (a float copy of
        # a whole 36 MP image would be 144 MB more).
        arr = np.asarray(img)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        out = np.empty(arr.shape, dtype=np.uint8)
        for row in range(0, arr.shape[0], 256):
            band = arr[row:row + 256].astype(np.float32)
            out[row:row + 256] = np.clip(band * (255.0 / top), 0, 255).astype(np.uint8)
        del arr
        img = Image.fromarray(out, mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    return img.convert("RGB")


def load_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
             draft_size: int | tuple[int, int] | None = None) -> Image.Image:
    """Decode bytes into an upright 8-bit RGB image.

    ``draft_size`` (one side, or width and height as stored) lets JPEG decoding downscale in the DCT
    domain to no less than that many pixels, which is much faster for large photos.
    """
    img = open_image(data, max_pixels)
    try:
        if draft_size is not None and img.format == "JPEG":
            img.draft("RGB", draft_size if isinstance(draft_size, tuple) else (draft_size, draft_size))
        img.load()
        return to_rgb(img)
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"the image data is unreadable ({exc})") from None


def decode(data: bytes, spec: Preprocessing) -> np.ndarray:
    """Bytes -> uint8 array (S, S, 3): the model's view of one image."""
    size = spec.image_size
    img = load_rgb(data, spec.max_pixels, draft_size=size)
    img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def read_mask(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A crack mask file (PNG, BMP, JPEG, TIFF; any mode) -> bool (H, W), upright: True where it is crack, that is
    wherever a channel is non-zero (above half-grey in a JPEG, whose compression smears black)."""
    img = open_image(data, max_pixels)
    try:
        lossy = img.format == "JPEG"
        img = ImageOps.exif_transpose(img)
        pixels = np.asarray(img.convert("RGBA" if "A" in img.getbands() else "RGB"))
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"the mask data is unreadable ({exc})") from None
    if pixels.shape[-1] == 4:  # transparent pixels are background, whatever their colour
        pixels = np.where(pixels[..., 3:] > 0, pixels[..., :3], 0)
    return (pixels.max(axis=-1) > (127 if lossy else 0))


def mask_png(mask: np.ndarray) -> bytes:
    """A bool crack mask (H, W) as the 8-bit PNG cracknet writes: crack 255, background 0."""
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, "L").save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def mask_at(mask: np.ndarray, size: int) -> np.ndarray:
    """A photo's bool mask (H, W) -> the share of crack in each pixel of the model's (S, S) view, as uint8 0-255,
    resized exactly as ``decode`` resizes the photo (so a crack thinner than a model pixel stays, fainter)."""
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def mask_tiles(mask: np.ndarray, boxes, size: int) -> np.ndarray:
    """A photo's bool mask (H, W) -> the crack share of each pixel of each tile's (S, S) view, uint8 0-255, for the
    boxes ``decode_tiles`` cut (a whole-photo box is resized as ``mask_at`` resizes it)."""
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    out = np.empty((len(boxes), size, size), dtype=np.uint8)
    for i, (x, y, w, h) in enumerate(boxes):
        out[i] = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR, box=(x, y, x + w, y + h)))
    return out


def normalise(x: torch.Tensor, spec: Preprocessing) -> torch.Tensor:
    import torch  # here, not at the top: reading a model card or planning a run needs no torch

    mean = torch.tensor(spec.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def to_float(images: torch.Tensor) -> torch.Tensor:
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"Expected a uint8 batch of shape (N, H, W, 3), got {tuple(images.shape)}.")
    return images.permute(0, 3, 1, 2).float().div_(255.0)  # (N, 3, H, W) in [0, 1]


def eval_preset(images: torch.Tensor, spec: Preprocessing) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalised float (N, 3, H, W)."""
    return normalise(to_float(images), spec)


def scored_whole(width: int, height: int, tile: int) -> bool:
    """The tiling rule: an image no larger than 1.5 tiles per side is one whole-image input, as in training."""
    return max(width, height) <= 1.5 * tile


def tile_boxes(width: int, height: int, tile: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """Boxes (x, y, w, h) of ``tile``-sided squares covering an image, neighbours overlapping by ``overlap``.

    The last row and column are shifted inwards to end at the image edge, so
    every box lies inside the image and every pixel is covered.
    """
    if not 0.0 <= overlap < 1.0:
        raise CracknetError(f"Tile overlap must be in [0, 1), got {overlap}.")
    stride = max(1, int(round(tile * (1.0 - overlap))))

    def starts(extent: int) -> list[int]:
        if extent <= tile:
            return [0]
        last = extent - tile
        return sorted(set(range(0, last, stride)) | {last})

    return [(x, y, min(tile, width), min(tile, height)) for y in starts(height) for x in starts(width)]


def draft_scale(tile: int, size: int) -> int:
    """The JPEG reduction (1, 2, 4 or 8) that still leaves a ``tile``-pixel square at least ``size`` pixels wide."""
    scale = 1
    while scale < 8 and tile // (scale * 2) >= size:
        scale *= 2
    return scale


def decode_tiles(data: bytes, spec: Preprocessing, tile: int, overlap: float):
    """Bytes -> (width, height, uint8 tiles (T, S, S, 3), boxes (T, 4)), boxes in the photo's own pixels.

    An image no larger than 1.5 tiles per side is one whole-image "tile",
    decoded exactly as in training; a larger one is cut into ``tile``-pixel
    squares at its native resolution (the scale the model learned on), each
    resized to S. The photo is decoded once; when a tile spans at least twice
    S pixels, a JPEG is decoded at 1/2, 1/4 or 1/8 of its size (in the DCT
    domain), so a 48 MP photo at a small model scale never exists at full size.
    """
    img = open_image(data, spec.max_pixels)
    width, height = img.size
    if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF turns the image a quarter
        width, height = height, width
    if scored_whole(width, height, tile):
        arr = decode(data, spec)
        return width, height, arr[None], np.array([[0, 0, width, height]], dtype=np.int32)
    scale = draft_scale(tile, spec.image_size)
    stored = img.size
    full = load_rgb(data, spec.max_pixels,
                    draft_size=None if scale == 1 else (-(-stored[0] // scale), -(-stored[1] // scale)))
    # Tiles are cut in the photo's own pixels and read from the (possibly reduced) decoded copy.
    fx, fy = full.size[0] / width, full.size[1] / height
    boxes = tile_boxes(width, height, tile, overlap)
    size = spec.image_size
    tiles = np.empty((len(boxes), size, size, 3), dtype=np.uint8)
    for i, (x, y, w, h) in enumerate(boxes):
        box = (x * fx, y * fy, (x + w) * fx, (y + h) * fy)
        tiles[i] = np.asarray(full.resize((size, size), Image.Resampling.BILINEAR, box=box))
    return width, height, tiles, np.asarray(boxes, dtype=np.int32)


MIN_TILE = 16


def check_tile_size(tile_size: int) -> None:
    """The tile side of `score` and `evaluate`: 0 for the model's own, else enough source pixels to see."""
    if tile_size != 0 and tile_size < MIN_TILE:
        raise CracknetError(f"--tile-size must be 0 (the model's own) or at least {MIN_TILE} source pixels, "
                            f"got {tile_size}.")
