"""Faster model calls for CPU scoring: torch.compile and INT8 against the eager bf16 that scoring uses.

    .venv/bin/python bench/score_numerics.py                       # the demo model (make demo), dev set
    .venv/bin/python bench/score_numerics.py --model runs/x/model --speed-size 224 --calls 8

For each way of running a trained model on this CPU — float32 eager (the
reference), bf16 autocast + channels_last eager (what `cracknet score` does
here), the same under ``torch.compile`` (what ``cracknet score --compile``
does), and INT8 (static quantization with PyTorch's x86 backend, calibrated
on training-split images) — it
prints: the set-up cost (export, calibration, compilation), images/s on calls
of --batch images at --speed-size px, and on the validation split of the
model's own data at the model's image size: the largest and mean difference
from the float32 probabilities, verdicts changed at the model's threshold, and
validation recall at that threshold against the model's recall target. A way
of running is worth adopting only when it is faster after its set-up cost on a
nightly run and keeps its probabilities within tolerance and the recall target.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cracknet import storage  # noqa: E402
from cracknet.data.splits import split_of  # noqa: E402
from cracknet.data.trees import discover  # noqa: E402
from cracknet.images.decoding import decode, eval_preset  # noqa: E402
from cracknet.measure.metrics import binary_metrics  # noqa: E402
from cracknet.model.card import preprocessing_of  # noqa: E402
from cracknet.model.network import load_artifact  # noqa: E402
from cracknet.model.precision import Precision  # noqa: E402
from cracknet.storage import content_hash  # noqa: E402

DEMO_MODEL = Path(__file__).resolve().parents[1] / "runs" / "demo" / "model"


def split_inputs(card: dict, limit: int) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    """Model inputs and labels of the model's own validation split, and of some training images."""
    spec = preprocessing_of(card)
    val_fraction, test_fraction = card["training"]["val_fraction"], card["training"]["test_fraction"]
    rows: dict[str, tuple[list, list]] = {"train": ([], []), "val": ([], [])}
    for image in discover(card["data"]["uri"]):
        raw = storage.read_bytes(image.uri)
        split = split_of(content_hash(raw), val_fraction, test_fraction)
        if split in rows and len(rows[split][0]) < limit:
            rows[split][0].append(decode(raw, spec))
            rows[split][1].append(image.label)
    return {k: (eval_preset(torch.from_numpy(np.stack(x)), spec), np.array(y)) for k, (x, y) in rows.items()}


def batches_of(x: torch.Tensor, batch: int):
    """Calls of exactly ``batch`` images (the last padded with zeros, as the scorer does)."""
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        if len(chunk) < batch:
            chunk = torch.cat([chunk, chunk.new_zeros((batch - len(chunk), *chunk.shape[1:]))])
        yield chunk, min(batch, len(x) - start)


class Way:
    """One way of running the model: a callable on a batch, and how long it took to set up."""

    def __init__(self, name: str, fn, bf16: bool, setup_seconds: float = 0.0):
        self.name, self.fn, self.bf16, self.setup_seconds = name, fn, bf16, setup_seconds

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return torch.sigmoid(self.fn(x).float().squeeze(1))

    def probabilities(self, x: torch.Tensor, batch: int) -> np.ndarray:
        return torch.cat([self(chunk)[:n] for chunk, n in batches_of(x, batch)]).numpy()

    def first_calls(self, shapes: list[torch.Size]) -> None:
        """Compile for every input shape before timing (counted as set-up)."""
        started = time.perf_counter()
        for shape in shapes:
            self(torch.zeros(shape))
        self.setup_seconds += time.perf_counter() - started

    def images_per_second(self, x: torch.Tensor, calls: int) -> float:
        self(x)
        started = time.perf_counter()
        for _ in range(calls):
            self(x)
        return calls * len(x) / (time.perf_counter() - started)


def int8_way(model: torch.nn.Module, calibration: torch.Tensor, batch: int) -> Way:
    """INT8 weights and activations (static; per-channel weights) with PyTorch's x86 backend (FX graph mode).

    Quantized once per input shape on first use, calibrated on 256 training-split images (resized for the
    speed column's size). PyTorch 2 export quantization (torchao's X86InductorQuantizer) would be the
    newer route; with torchao 0.18 on torch 2.14 it fails to annotate ResNet50 ("Input partition has
    more than one output node"), so the FX route it replaces is what runs here."""
    import copy

    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    quantized: dict[torch.Size, torch.nn.Module] = {}

    def build(shape: torch.Size) -> torch.nn.Module:
        images = calibration
        if images.shape[-2:] != shape[-2:]:
            images = torch.nn.functional.interpolate(images, size=tuple(shape[-2:]), mode="bilinear")
        prepared = prepare_fx(copy.deepcopy(model).to(memory_format=torch.contiguous_format).eval(),
                              get_default_qconfig_mapping("x86"), (images[:2],))
        with torch.no_grad():
            for chunk, _ in batches_of(images, shape[0]):
                prepared(chunk)
        return convert_fx(prepared)

    def run(x: torch.Tensor) -> torch.Tensor:
        if x.shape not in quantized:
            quantized[x.shape] = build(x.shape)
        return quantized[x.shape](x)

    return Way("INT8", run, bf16=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEMO_MODEL), help="a trained cracknet model folder")
    parser.add_argument("--speed-size", type=int, default=224, help="image side for the speed column")
    parser.add_argument("--batch", type=int, default=64, help="images per model call (scoring's --batch-size)")
    parser.add_argument("--calls", type=int, default=6, help="timed calls per way")
    parser.add_argument("--val-images", type=int, default=2000, help="at most this many validation images")
    parser.add_argument("--only", nargs="*", help="names of the ways to run (default: all)")
    args = parser.parse_args()

    if not storage.exists(storage.join(args.model, "model.json")):
        sys.exit(f"No model at {args.model}; run `make demo` first or pass --model.")
    torch.manual_seed(0)
    torch._inductor.config.freezing = True  # fold the weights into the compiled graph (inference only)
    model, card = load_artifact(args.model)
    target = card["training"]["target_recall"]
    threshold = card["threshold"]
    data = split_inputs(card, args.val_images)
    x_val, y_val = data["val"]
    size = x_val.shape[-1]
    speed_x = torch.rand(args.batch, 3, args.speed_size, args.speed_size)
    shapes = [torch.Size((args.batch, 3, size, size)), speed_x.shape]
    print(f"Model {args.model} ({size} px, threshold {threshold:.3f} for recall >= {target}); "
          f"{len(y_val)} validation images, {int(y_val.sum())} cracks; {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"bf16 {'native' if Precision.for_inference(torch.device('cpu')).autocast_dtype else 'not native'}.")

    cl_model = model.to(memory_format=torch.channels_last)
    ways = {
        "fp32 eager": lambda: Way("fp32 eager", cl_model, bf16=False),
        "bf16 eager": lambda: Way("bf16 eager", cl_model, bf16=True),
        "bf16 compiled": lambda: Way("bf16 compiled", torch.compile(cl_model), bf16=True),
        "INT8 (x86, calibrated)": lambda: int8_way(cl_model, data["train"][0][:256], args.batch),
    }
    reference = None
    print(f"{'way':<24}{'set-up s':>9}{'img/s @' + str(args.speed_size):>12}{'max |dp|':>10}{'mean |dp|':>11}"
          f"{'flips':>7}{'val recall':>12}{'precision':>11}")
    for name, make in ways.items():
        if args.only and name not in args.only and name != "fp32 eager":
            continue
        way = make()
        way.first_calls(shapes)
        speed = way.images_per_second(speed_x, args.calls)
        probs = way.probabilities(x_val, args.batch)
        if reference is None:
            reference = probs
        diff = np.abs(probs - reference)
        flips = int(((probs >= threshold) != (reference >= threshold)).sum())
        m = binary_metrics(probs, y_val, threshold)
        verdict = "" if m["recall"] >= target else "  (below the recall target)"
        print(f"{name:<24}{way.setup_seconds:>9.1f}{speed:>12.1f}{diff.max():>10.4f}{diff.mean():>11.5f}"
              f"{flips:>7}{m['recall']:>12.4f}{m['precision']:>11.4f}{verdict}", flush=True)


if __name__ == "__main__":
    main()
