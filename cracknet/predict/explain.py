"""Why the model said "crack": a Grad-CAM heatmap of the last convolutional stage over the image.

    cracknet explain --model s3://models/crack-2026-11 photo.jpg --output photo-cam.png

Grad-CAM weights each channel of ResNet50's last stage (``layer4``) by the mean
gradient of the crack logit with respect to it, sums the weighted channels and
keeps the positive part: the regions whose features raised the crack score.
The map is upsampled to the photo and drawn over it as a colour overlay. The
image is read and scored exactly as the nightly job scores it
(``cracknet.predict.scorer``): whole, up to 1.5 tiles per side; a larger photo is tiled,
its probability is its highest tile's, and the overlay combines the maps of its
most crack-like tiles, each weighted by its tile's probability. With a model that
draws masks, each crack's centre line is drawn on top, as wide as the crack and
coloured by its severity class.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np
from PIL import Image

from cracknet.config import REQUIRED, option
from cracknet.numbers import MM_PER_PIXEL, check_fields

if TYPE_CHECKING:
    import torch

    from cracknet.predict.scorer import Scorer

from cracknet import storage
from cracknet.images.decoding import ImageError, load_rgb
from cracknet.images.drawing import draw_cracks
from cracknet.measure.geometry import DEFAULT_WIDTH_CLASSES, parse_width_classes

DISPLAY_SIDE = 1024
MOST_TILES = 16  # Grad-CAM of a large photo: the maps of its most crack-like tiles


def grad_cam(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, np.ndarray]:
    """Crack probability and the Grad-CAM map (h x w of layer4, scaled to [0, 1]) for one (1, 3, S, S) input."""
    import torch

    saved: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        saved["activation"] = output

    handle = model.layer4.register_forward_hook(keep)
    try:
        model.eval()
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            logit = model(x.requires_grad_(True))[0, 0]
            logit.backward()
    finally:
        handle.remove()
    activation = saved["activation"]
    weights = activation.grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * activation).sum(dim=1))[0].detach().float().numpy()
    peak = cam.max()
    return float(torch.sigmoid(logit).item()), (cam / peak if peak > 0 else cam)


def upsample(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The map at ``size`` (width, height), bilinear, in [0, 1]."""
    return np.asarray(Image.fromarray(cam.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))


def colour(heat: np.ndarray) -> np.ndarray:
    """A blue-cyan-yellow-red ramp for values in [0, 1], as uint8 RGB."""
    h = np.clip(heat, 0.0, 1.0)[..., None]
    stops = np.array([[0, 0, 128], [0, 160, 255], [255, 230, 0], [220, 0, 0]], dtype=np.float32)
    position = h * (len(stops) - 1)
    low = np.clip(np.floor(position).astype(int), 0, len(stops) - 2)
    t = position - low
    return (stops[low[..., 0]] * (1 - t) + stops[low[..., 0] + 1] * t).astype(np.uint8)


def overlay(img: Image.Image, cam: np.ndarray, strength: float = 0.5) -> Image.Image:
    """The photo with the heatmap blended in where there is heat (cool regions stay almost untouched)."""
    heat = upsample(cam, img.size)
    alpha = (strength * np.clip(heat * 1.5, 0, 1))[..., None]
    blended = np.asarray(img, dtype=np.float32) * (1 - alpha) + colour(heat).astype(np.float32) * alpha
    return Image.fromarray(blended.clip(0, 255).astype(np.uint8), mode="RGB")


@dataclass(frozen=True)
class ExplainConfig:
    """``cracknet explain``: where one image's crack verdict comes from, as a PNG overlay."""
    model: str = option(REQUIRED, "the model/ folder, the training output above it, or models:/...")
    image: str = option(REQUIRED, "the image: a local path or s3:// URI", positional=True)
    output: str = option(REQUIRED, "where the PNG overlay goes (path or s3://)", aliases=("--out",))
    mm_per_pixel: Optional[float] = option(None, "the photo's scale, for crack sizes in mm and severity (models "
                                                 "that draw masks)", range=MM_PER_PIXEL)
    width_classes: str = option(DEFAULT_WIDTH_CLASSES, "severity classes by crack width in mm, "
                                "name:below_mm,...,name (default: AASHTO MBEI defect 1130)")

    def __post_init__(self):
        check_fields(self)
        parse_width_classes(self.width_classes)


def explain(model: str | Scorer, image_uri: str, out: str, most_tiles: int = MOST_TILES,
            mm_per_pixel: float | None = None, width_classes: str = DEFAULT_WIDTH_CLASSES) -> dict:
    """Write the Grad-CAM overlay of one image to ``out`` (PNG); return probability, threshold and the heat map
    (at the size of the overlay). ``model`` is a model's URI, or a ``Scorer`` already loaded (explaining many
    images loads it once). The probability is the nightly job's (``cracknet.predict.scorer``). A model that draws
    masks also measures the photo's cracks as the nightly job does and draws their centre lines, coloured by
    severity (``cracknet.images.drawing``); they are returned as ``cracks``."""
    import torch

    from cracknet.errors import CracknetError
    from cracknet.images.decoding import eval_preset
    from cracknet.predict.scorer import Scorer, read_image
    from cracknet.predict.stitching import photo_cracks

    classes = parse_width_classes(width_classes)
    scorer = Scorer.load(model) if isinstance(model, str) else model
    found = read_image(storage.absolute(image_uri), scorer.spec, scorer.tiling)
    if found.error:
        raise CracknetError(f"{image_uri}: {found.error}.")
    best, per_tile, maps = scorer.score_masks([found.tiles], scorer.threshold)
    probability, tile_probs = float(best[0]), per_tile[0]
    cracks = None
    if scorer.draws_masks:
        mask = scorer.card["mask"]
        _, cracks = photo_cracks(maps[0], found.boxes, found.width, found.height, mask["threshold"],
                                 mask.get("width_threshold"), mm_per_pixel, classes)
    try:
        shown = load_rgb(storage.read_bytes(found.uri), scorer.spec.max_pixels, draft_size=DISPLAY_SIDE)
    except ImageError as exc:
        raise CracknetError(f"{image_uri}: {exc}.") from None
    shown.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE), Image.Resampling.BILINEAR)
    fx, fy = shown.size[0] / found.width, shown.size[1] / found.height
    heat = np.zeros((shown.size[1], shown.size[0]), dtype=np.float32)
    model = scorer.classifier.float()
    # The tiles the model found most crack-like, each map weighted by its tile's probability.
    for i in np.argsort(-tile_probs, kind="stable")[:most_tiles]:
        x, y, w, h = found.boxes[i]
        left, top = int(round(x * fx)), int(round(y * fy))
        right, bottom = max(left + 1, int(round((x + w) * fx))), max(top + 1, int(round((y + h) * fy)))
        _, cam = grad_cam(model, eval_preset(torch.from_numpy(np.array(found.tiles[i]))[None], scorer.spec))
        region = heat[top:bottom, left:right]
        weighted = tile_probs[i] * upsample(cam, (right - left, bottom - top))
        np.maximum(region, weighted[:region.shape[0], :region.shape[1]], out=region)
    heat = heat / heat.max() if heat.max() > 0 else heat
    picture = overlay(shown, heat)
    if cracks:
        picture = draw_cracks(picture, cracks, fx, classes)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    storage.write_bytes(out, buffer.getvalue())
    return {"image": image_uri, "out": out, "crack_probability": probability, "threshold": scorer.threshold,
            "is_crack": probability >= scorer.threshold, "cam": heat, "size": (found.width, found.height),
            "tiles": len(tile_probs), "cracks": cracks}
