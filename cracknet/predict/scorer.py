"""The one inference path: images in, crack probabilities out.

    scorer = Scorer.load("runs/demo")                       # weights, preprocessing, precision, tiling, threshold
    found = read_image("s3://survey/a.jpg", scorer.spec, scorer.tiling)   # tiles at the model's scale, or why not
    probs, per_tile = scorer.score([found.tiles, ...])      # per image: the highest of its tile probabilities
    cracknet.load_model("runs/demo").predict(["a.jpg", pil_image, array])   # the same, for a notebook

Training validation (so the threshold is chosen on these numbers), ``evaluate``,
``report``, ``explain`` and the nightly scoring actors all score through here:

- **reading**: ``read_image`` is the one read-and-decode function, with one error
  policy: a missing or undecodable image is an error *about that image*; an
  object store that keeps failing is not, and raises ``StorageUnavailable``.
- **tiling**: an image up to 1.5 tiles per side is one whole-image input, exactly
  as in training; a larger photo is cut into tiles of ``tiling.size`` source
  pixels (the scale the model learned on), each resized to the model's input,
  and the image's probability is the highest of its tiles.
- **precision**: channels_last everywhere, bf16 autocast on GPUs and on CPUs with
  native bf16 instructions (``Precision.for_inference``), float32 otherwise.
- **batching**: model calls take ``batch_tiles`` tiles, however they are spread
  over images (a short last call is padded), and the tiles of a batch are never
  copied whole. One call shape means one set of kernels, so a tile's probability
  does not depend on the path or on the tiles beside it. Where none is asked for,
  a call takes 64 tiles, or 8 in float32 on a CPU (``call_tiles``).

Importing this module needs no torch (the scoring driver and the read tasks use
``read_image`` and ``tiling_of``); a ``Scorer`` imports it when made.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from cracknet import storage
from cracknet.errors import CracknetError, ReadRefused, StorageUnavailable
from cracknet.images.decoding import ImageError, Preprocessing, decode_tiles, scored_whole, tile_boxes, to_rgb
from cracknet.images.metadata import photo_metadata
from cracknet.storage import content_hash

if TYPE_CHECKING:
    import torch

CALL_TILES, FLOAT32_CPU_CALL_TILES = 64, 8
DEFAULT_TILE = 227  # the METU patches' side, for cards that do not record their training images' size
DEFAULT_OVERLAP = 0.25


@dataclass(frozen=True)
class Tiling:
    """How large photos are cut: squares of ``size`` source pixels, neighbours overlapping by ``overlap``."""

    size: int = DEFAULT_TILE
    overlap: float = DEFAULT_OVERLAP


def tiling_of(card: dict, tile_size: int = 0, overlap: float = DEFAULT_OVERLAP) -> Tiling:
    """The tiling a model scores with: ``tile_size`` when given, else the side of its training images."""
    return Tiling(int(tile_size or card["preprocessing"].get("source_size") or DEFAULT_TILE), overlap)


@dataclass
class Found:
    """One image read for scoring: its tiles and their boxes, or the reason it could not be read."""

    uri: str
    version: str = ""
    width: int = 0
    height: int = 0
    tiles: np.ndarray | None = None  # uint8 (T, S, S, 3)
    boxes: np.ndarray | None = None  # int32 (T, 4): x, y, w, h in the photo's own pixels
    error: str = ""
    error_kind: str = ""  # with error: "permanent" (about the file itself) or "transient" (may read later)
    skipped: bool = False  # left out by ``want``
    photo: str = ""  # where and how it was taken, from its header (``metadata.table_fields``, JSON); "" unread

    def fail(self, exc: BaseException) -> "Found":
        self.error, self.error_kind = _error(exc), error_kind(exc)
        return self


def read_image(uri: str, spec: Preprocessing, tiling: Tiling, root: str | None = None, version: str = "",
               want: Callable[[str, str], bool] | None = None) -> Found:
    """Read and decode one image; an unreadable image comes back with ``error`` set, never as an exception.

    Raises only ``StorageUnavailable`` (the store kept failing: not a fact about this image). With ``root``,
    an image outside it is not read at all; with ``want``, only an image it accepts by URI and SHA-256 is decoded.
    """
    found, data = fetch(uri, root, version, spec.max_bytes)
    if data is None:
        return found
    if want is not None and not want(uri, content_hash(data)):
        found.skipped = True
        return found
    return decode_into(found, data, spec, tiling)


def fetch(uri: str, root: str | None = None, version: str = "", max_bytes: int = 0) -> tuple[Found, bytes | None]:
    """The first half of ``read_image``: the bytes of one image (None, with ``error`` set, where they cannot be
    had; a file over ``max_bytes`` is refused by its size, unread). For decoders elsewhere, e.g. on a GPU."""
    found = Found(uri, version)
    try:
        if root is not None and not storage.within(uri, root):
            raise CracknetError(f"{uri} lies outside the input location {root}, so it was not read "
                                "(--input-prefix widens the location).")
        data, read_version = storage.read_versioned(uri, max_bytes)
        found.version = version or read_version
        found.photo = json.dumps(photo_metadata(data).table_fields())
        return found, data
    except StorageUnavailable:
        raise
    except Exception as exc:
        return found.fail(exc), None


def decode_into(found: Found, data: bytes, spec: Preprocessing, tiling: Tiling) -> Found:
    """The second half of ``read_image``: decode and tile on the CPU, or set ``error``."""
    try:
        found.width, found.height, found.tiles, found.boxes = decode_tiles(data, spec, tiling.size, tiling.overlap)
    except Exception as exc:
        found.fail(exc)
    return found


def error_kind(exc: BaseException) -> str:
    """Permanent: a fact about the file (not an image, truncated, too many pixels or bytes, outside the input, gone);
    transient: tonight's circumstance (access refused, archived, out of memory, an unexpected failure), so later
    runs try it again."""
    if isinstance(exc, CracknetError) and not isinstance(exc, ReadRefused):
        return "permanent"
    return "transient"


def _error(exc: Exception) -> str:
    if isinstance(exc, CracknetError):  # ImageError included: a sentence about this image
        return str(exc)
    return f"unexpected {type(exc).__name__}: {exc}"  # anything else about one image must not stop a batch


def tiles_of_picture(picture: Image.Image, spec: Preprocessing, tiling: Tiling) -> tuple[np.ndarray, np.ndarray]:
    """An in-memory picture -> (tiles, boxes), by the rule ``decode_tiles`` applies to bytes (no JPEG draft)."""
    img = to_rgb(picture)
    width, height = img.size
    size = spec.image_size
    if scored_whole(width, height, tiling.size):
        whole = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
        return whole[None], np.array([[0, 0, width, height]], dtype=np.int32)
    boxes = tile_boxes(width, height, tiling.size, tiling.overlap)
    tiles = np.stack([np.asarray(img.resize((size, size), Image.Resampling.BILINEAR, box=(x, y, x + w, y + h)))
                      for x, y, w, h in boxes])
    return tiles, np.asarray(boxes, dtype=np.int32)


JPEG_START = b"\xff\xd8\xff"
RESIZE_CHUNK = 256  # tiles resized at once on the device


def decodable_on_device(data: bytes, spec: Preprocessing) -> bool:
    """Whether nvJPEG-style batch decoding gives what ``decode_tiles`` gives: a baseline 8-bit RGB or greyscale
    JPEG, upright (no EXIF turn), within the pixel limit. Anything else takes the CPU path."""
    if not data.startswith(JPEG_START):
        return False
    try:
        from cracknet.images.decoding import open_image

        img = open_image(data, spec.max_pixels)
        return img.mode in ("RGB", "L") and img.getexif().get(0x0112, 1) == 1
    except (ImageError, OSError, ValueError, SyntaxError):
        return False


def tiles_on_device(datas: Sequence[bytes], spec: Preprocessing, tiling: Tiling, device: "torch.device"):
    """Decode JPEGs in one batch on ``device`` (``torchvision.io.decode_jpeg``: nvJPEG on a GPU) and tile them
    there, by the rule of ``decode_tiles``. Returns, per input, (width, height, uint8 tiles (T, S, S, 3) on the
    device, boxes) or None where the CPU path must decode it (not a plain JPEG, or the device refused it)."""
    import torch
    import torch.nn.functional as F
    from torchvision.io import ImageReadMode, decode_jpeg

    out: list = [None] * len(datas)
    chosen = [i for i, data in enumerate(datas) if decodable_on_device(data, spec)]
    if not chosen:
        return out
    encoded = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in chosen]
    try:
        images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:  # one bad stream fails the whole batch: decode one by one, keeping what works
        images = []
        for e in encoded:
            try:
                images.append(decode_jpeg(e, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                images.append(None)
    size = spec.image_size
    for i, img in zip(chosen, images):
        if img is None:
            continue
        height, width = int(img.shape[1]), int(img.shape[2])
        if scored_whole(width, height, tiling.size):
            boxes = [(0, 0, width, height)]
        else:
            boxes = tile_boxes(width, height, tiling.size, tiling.overlap)
        tiles = torch.empty((len(boxes), size, size, 3), dtype=torch.uint8, device=img.device)
        for start in range(0, len(boxes), RESIZE_CHUNK):
            chunk = boxes[start:start + RESIZE_CHUNK]
            crops = torch.stack([img[:, y:y + h, x:x + w] for x, y, w, h in chunk]).float()
            resized = F.interpolate(crops, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            tiles[start:start + len(chunk)] = resized.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        out[i] = (width, height, tiles, np.asarray(boxes, dtype=np.int32))
    return out


@dataclass
class Prediction:
    """What ``Scorer.predict`` says about one input."""

    source: str
    crack_probability: float
    is_crack: bool
    tile_probabilities: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=np.float32))
    error: str = ""


def call_tiles(device: "torch.device", precision: Any) -> int:
    """Tiles per model call where none are asked for: 64, but 8 in float32 on a CPU, where more of ResNet50's
    activations stay in the CPU's caches (1.4x faster than calls of 64 on a 2-core EPYC without bf16; 16 gave
    1.2x). bf16 CPUs and GPUs keep 64."""
    return FLOAT32_CPU_CALL_TILES if device.type == "cpu" and precision.autocast_dtype is None else CALL_TILES


class Scorer:
    """A model with everything needed to score like the nightly job: preprocessing, precision, tiling, batching."""

    def __init__(self, model: "torch.nn.Module", spec: Preprocessing, *, device: "torch.device | None" = None,
                 precision: Any = None, tiling: Tiling = Tiling(), batch_tiles: int = 0, threshold: float = 0.5,
                 card: dict | None = None, classify: Callable | None = None):
        import torch

        from cracknet.model.network import classifier_of
        from cracknet.model.precision import Precision

        self.model = model  # a classifier, or a CrackSegmenter whose classifier decides is_crack
        self.classifier = classifier_of(model)
        self.classify = self.classifier if classify is None else classify  # the crack head's forward (compiled, where asked)
        self.draws_masks = self.classifier is not model
        self.spec = spec
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = precision or Precision.for_inference(self.device)
        self.tiling = tiling
        self.batch_tiles = max(1, int(batch_tiles)) if batch_tiles else call_tiles(self.device, self.precision)
        self.threshold = float(threshold)
        self.card = card or {}

    @classmethod
    def load(cls, uri: str, *, batch_tiles: int = 0, tile_size: int = 0, overlap: float = DEFAULT_OVERLAP,
             fp32: bool = False, model_id: str | None = None, threads: int = 0, compile: bool = False) -> "Scorer":
        """The model at ``uri`` (its weights checked against its card) ready to score on this machine's best device.

        With ``model_id``, refuse a model other than the one named (e.g. replaced since a run began). With
        ``compile``, the model runs under ``torch.compile`` with its weights frozen into the graph: the first
        call compiles (about a minute on two CPU cores), later ones are about 1.5x faster on CPUs. Every call
        has one shape, so it compiles once.
        """
        import torch

        from cracknet.model.card import preprocessing_of
        from cracknet.model.network import classifier_of, load_artifact
        from cracknet.model.precision import Precision

        if threads:
            torch.set_num_threads(threads)
        model, card = load_artifact(uri, model_id=model_id)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        precision = Precision.for_inference(device, allow_bf16=not fp32)
        model.to(device)
        if precision.channels_last:
            model.to(memory_format=torch.channels_last)
        model = model.eval()
        classify = torch.compile(classifier_of(model), options={"freezing": True}) if compile else None
        return cls(model, preprocessing_of(card), device=device, precision=precision,
                   tiling=tiling_of(card, tile_size, overlap), batch_tiles=batch_tiles,
                   threshold=float(card["threshold"]), card=card, classify=classify)

    @property
    def model_id(self) -> str:
        return str(self.card.get("model_id", ""))

    def tile_probabilities(self, tiles: "np.ndarray | torch.Tensor") -> np.ndarray:
        """uint8 tiles (T, S, S, 3) -> crack probabilities (T,), ``batch_tiles`` per model call."""
        probs = [self._forward(tiles[start:start + self.batch_tiles])[0]
                 for start in range(0, len(tiles), self.batch_tiles)]
        return np.concatenate(probs) if probs else np.zeros(0, dtype=np.float32)

    def score(self, images: Sequence[Any]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Tile stacks of several images (uint8 (T, S, S, 3) arrays, or tensors already on the device; None for an
        unreadable one) -> (the highest tile probability per image, NaN for None; each image's tile
        probabilities). Model calls are filled with ``batch_tiles`` tiles across image boundaries."""
        best, per_tile, _ = self._score(images, None)
        return best, per_tile

    def score_masks(self, images: Sequence[Any], gate: float) -> tuple[np.ndarray, list[np.ndarray], list[dict]]:
        """``score``, and for a model with a mask decoder each image's crack maps: {tile index: float32 (S, S)
        crack probability per model pixel} for its tiles at or above ``gate``, decoded in the same forward pass
        as the verdicts (the decoder runs on those tiles only, so clean photos cost what they cost without it)."""
        return self._score(images, gate)

    def _score(self, images: Sequence[Any], gate: float | None):
        per_tile = [np.zeros(0 if t is None else len(t), dtype=np.float32) for t in images]
        per_map: list[dict] = [{} for _ in images]
        pending: list[tuple[int, int, int]] = []
        count = 0

        def flush():
            nonlocal pending, count
            if pending:
                probs, maps = self._forward(self._join([images[i][a:b] for i, a, b in pending]), gate)
                offset = 0
                for i, a, b in pending:
                    per_tile[i][a:b] = probs[offset:offset + b - a]
                    per_map[i].update({a + row - offset: m for row, m in maps.items() if offset <= row < offset + b - a})
                    offset += b - a
            pending, count = [], 0

        for i, tiles in enumerate(images):
            start = 0
            while tiles is not None and start < len(tiles):
                take = min(len(tiles) - start, self.batch_tiles - count)
                pending.append((i, start, start + take))
                count += take
                start += take
                if count == self.batch_tiles:
                    flush()
        flush()
        best = np.asarray([p.max() if len(p) else np.nan for p in per_tile], dtype=np.float32)
        return best, per_tile, per_map

    def predict_batches(self, batches: Iterable[dict], keep: Callable | None = None):
        """Labelled batches (``image`` uint8 (N, S, S, 3), ``label``, ``idx``) -> (probabilities, labels, idx) of
        the rows ``keep`` selects (all by default). Images are already at the model's scale (training data).
        Rows are gathered into full model calls across batches, as ``score`` fills them across images."""
        images, labels, indices, probs = [], [], [], []
        held = 0
        for batch in batches:
            rows = keep(batch["idx"]) if keep is not None else slice(None)
            chosen = np.asarray(batch["image"][rows])
            if len(chosen):
                images.append(chosen)
                labels.append(np.asarray(batch["label"][rows]))
                indices.append(np.asarray(batch["idx"][rows]))
                held += len(chosen)
            if held >= self.batch_tiles:
                stacked = np.concatenate(images)
                full = len(stacked) - len(stacked) % self.batch_tiles
                probs.append(self.tile_probabilities(stacked[:full]))
                images, held = ([stacked[full:]] if full < len(stacked) else []), len(stacked) - full
        if held:
            probs.append(self.tile_probabilities(np.concatenate(images)))
        if not indices:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(probs), np.concatenate(labels), np.concatenate(indices)

    def predict(self, items: Iterable[Any]) -> list[Prediction]:
        """Score paths or URIs (read exactly as the nightly job reads them), PIL images or uint8 arrays (H, W, 3
        or H, W); a bad path comes back with ``error`` set and probability NaN."""
        found: list[tuple[str, np.ndarray | None, str]] = []
        for n, item in enumerate(items):
            if isinstance(item, (str, bytes)) or hasattr(item, "__fspath__"):
                uri = storage.absolute(str(item if not isinstance(item, bytes) else item.decode()))
                got = read_image(uri, self.spec, self.tiling)
                found.append((uri, got.tiles, got.error))
                continue
            try:
                picture = item if isinstance(item, Image.Image) else Image.fromarray(np.asarray(item))
                found.append((f"<image {n}>", tiles_of_picture(picture, self.spec, self.tiling)[0], ""))
            except (TypeError, ValueError, ImageError) as exc:
                found.append((f"<image {n}>", None, f"not an image ({exc})"))
        best, per_tile = self.score([tiles for _, tiles, _ in found])
        return [Prediction(source, float(p), bool(p >= self.threshold), tiles, error)
                for (source, _, error), p, tiles in zip(found, best, per_tile)]

    def _join(self, parts: list) -> "np.ndarray | torch.Tensor":
        """Tiles of several images as one model input: numpy on the host, or a tensor where any part is one
        (tiles decoded on the device stay there)."""
        if all(isinstance(p, np.ndarray) for p in parts):
            return np.concatenate(parts)
        import torch

        return torch.cat([torch.as_tensor(p).to(self.device) for p in parts])

    def _forward(self, tiles: "np.ndarray | torch.Tensor", gate: float | None = None) -> tuple[np.ndarray, dict]:
        """Crack probabilities of up to ``batch_tiles`` tiles, and with ``gate`` {row: crack map} of the rows at or
        above it (``score_masks``)."""
        import torch

        from cracknet.images.decoding import eval_preset

        self.model.eval()
        x = torch.as_tensor(np.ascontiguousarray(tiles) if isinstance(tiles, np.ndarray) else tiles)
        n = len(x)
        if n < self.batch_tiles:
            # Every call has the same shape, so the kernels (and their rounding) are the same whichever path
            # and whichever neighbours a tile comes with: validation, evaluate and score agree exactly.
            x = torch.cat([x, x.new_zeros((self.batch_tiles - n, *x.shape[1:]))])
        with torch.no_grad():
            x = self.precision.inputs(eval_preset(x.to(self.device, non_blocking=True), self.spec))
            with self.precision.autocast(self.device):
                if gate is None or not self.draws_masks:
                    return torch.sigmoid(self.classify(x).squeeze(1)[:n].float()).cpu().numpy(), {}
                # The encoder once: its pooled features give the verdicts (the classifier's own operations, so the
                # same numbers), its stages feed the decoder for the tiles the gate lets through.
                features = self.model.encode(x)
                probs = torch.sigmoid(self.model.crack_logit(features)[:n].float())
                rows = torch.nonzero(probs >= gate).flatten()
                maps = {}
                if len(rows):
                    logits = self.model.decode(x[rows], {name: f[rows] for name, f in features.items()})
                    maps = dict(zip(rows.tolist(), torch.sigmoid(logits.float())[:, 0].cpu().numpy()))
            return probs.cpu().numpy(), maps


def load_model(uri: str, **options) -> Scorer:
    """A trained model for notebooks and scripts: ``load_model(uri).predict([...])``, no Ray needed.

    Options as for ``Scorer.load``: batch_tiles, tile_size, overlap, fp32, compile.
    """
    return Scorer.load(uri, **options)
