"""Why the model said "crack": a Grad-CAM heatmap of the last convolutional stage over the image.

    cracknet explain --model s3://models/crack-2026-11 photo.jpg --out photo-cam.png

Grad-CAM weights each channel of ResNet50's last stage (``layer4``) by the mean
gradient of the crack logit with respect to it, sums the weighted channels and
keeps the positive part: the regions whose features raised the crack score.
The map is upsampled to the photo and drawn over it as a colour overlay. The
model sees the whole image at its input size, exactly as scoring does for
images up to 1.5 tiles per side; for large survey photos the tile table of a
scoring run is the finer map.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from cracknet import storage
from cracknet.transforms import ImageError, load_rgb

DISPLAY_SIDE = 1024


def grad_cam(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, np.ndarray]:
    """Crack probability and the Grad-CAM map (h x w of layer4, scaled to [0, 1]) for one (1, 3, S, S) input."""
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


def explain(model_uri: str, image_uri: str, out: str) -> dict:
    """Write the Grad-CAM overlay of one image to ``out`` (PNG); return probability, threshold and the map."""
    from cracknet.errors import CracknetError
    from cracknet.model import load_artifact, preprocessing_of
    from cracknet.transforms import eval_preset

    model, card = load_artifact(model_uri)
    spec = preprocessing_of(card)
    try:
        img = load_rgb(storage.read_bytes(image_uri), spec.max_pixels)
    except ImageError as exc:
        raise CracknetError(f"{image_uri}: {exc}.") from None
    arr = np.array(img.resize((spec.image_size, spec.image_size), Image.Resampling.BILINEAR), dtype=np.uint8)
    x = eval_preset(torch.from_numpy(arr)[None], spec)
    probability, cam = grad_cam(model.float(), x)
    shown = img.copy()
    shown.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    overlay(shown, cam).save(buffer, format="PNG")
    storage.write_bytes(out, buffer.getvalue())
    return {"image": image_uri, "out": out, "crack_probability": probability, "threshold": card["threshold"],
            "is_crack": probability >= card["threshold"], "cam": cam, "size": img.size}
