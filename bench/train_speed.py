"""Training speed on this machine: precision and memory format, and what Ray Train costs.

    .venv/bin/python bench/train_speed.py                 # dev set at 64 px
    .venv/bin/python bench/train_speed.py --steps 30 --images 1200

Part 1, one process (all cores), cracknet's ``train_one_epoch`` on decoded images: float32, float32 +
channels_last, bf16 autocast, bf16 + channels_last — images/s after a warm-up. Part 2, the same work
through ``cracknet train`` on a local Ray: 1 worker with every core against 2 workers with one core
each (DDP over gloo), from the images/s each epoch records (training steps only, all workers
together), against the plain single process of part 1 in the precision training uses here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cracknet import storage  # noqa: E402
from cracknet.data.trees import discover  # noqa: E402
from cracknet.images.decoding import Preprocessing, decode  # noqa: E402
from cracknet.model.network import build_model  # noqa: E402
from cracknet.model.precision import Precision  # noqa: E402
from cracknet.train.epoch import train_one_epoch  # noqa: E402

DEV_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "metu-dev")


def one_process(images: torch.Tensor, labels: torch.Tensor, spec: Preprocessing, precision: Precision,
                steps: int, batch: int) -> float:
    torch.manual_seed(0)
    model = build_model()
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    device = torch.device("cpu")

    def batches(n):
        for k in range(n):
            rows = torch.arange(k * batch, (k + 1) * batch) % len(images)
            yield {"image": images[rows], "label": labels[rows]}

    train_one_epoch(model, batches(2), optimizer, spec, device, generator, lambda _: 1e-4, precision)  # warm-up
    started = time.perf_counter()
    train_one_epoch(model, batches(steps), optimizer, spec, device, generator, lambda _: 1e-4, precision)
    return steps * batch / (time.perf_counter() - started)


def with_ray(data: str, workers: int, epochs: int, image_size: int, batch: int) -> float:
    from cracknet.train.config import TrainConfig
    from cracknet.train.driver import run_training

    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(data=data, output=out, epochs=epochs, image_size=image_size, batch_size=batch,
                          num_workers=workers, cpus_per_worker=max(1, (os.cpu_count() or 1) // workers),
                          weights="none")
        card = run_training(cfg, log=lambda _: None)
    history = card["training"]["history"]
    return float(np.mean([h["images_per_second"] for h in history[1:] or history]))  # the first epoch warms up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEV_DATA)
    parser.add_argument("--images", type=int, default=1200, help="images used (the first of each class, half each)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32, help="per process (per worker under Ray)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    spec = Preprocessing(args.image_size)
    everything = discover(args.data)
    found = [i for label in (0, 1) for i in [i for i in everything if i.label == label][:args.images // 2]]
    images = torch.from_numpy(np.stack([decode(storage.read_bytes(i.uri), spec) for i in found]))
    labels = torch.tensor([i.label for i in found])
    print(f"{len(found)} images at {args.image_size} px, batch {args.batch}, {os.cpu_count()} CPUs; "
          f"bf16 instructions: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}", flush=True)

    results = {}
    for name, precision in (("float32", Precision()), ("float32 + channels_last", Precision(None, True)),
                            ("bf16", Precision(torch.bfloat16, False)),
                            ("bf16 + channels_last", Precision(torch.bfloat16, True))):
        results[name] = one_process(images, labels, spec, precision, args.steps, args.batch)
        print(f"one process, {name:24s} {results[name]:7.1f} images/s", flush=True)

    chosen = Precision.for_training(torch.device("cpu"))
    label = {(None, False): "float32", (None, True): "float32 + channels_last",
             (torch.bfloat16, False): "bf16", (torch.bfloat16, True): "bf16 + channels_last"}[
        (chosen.autocast_dtype, chosen.channels_last)]
    with tempfile.TemporaryDirectory() as tmp:
        subset = os.path.join(tmp, "data")
        for image in found:
            storage.write_bytes(os.path.join(subset, os.path.relpath(image.uri, args.data)),
                                storage.read_bytes(image.uri))
        for workers in (1, 2):
            rate = with_ray(subset, workers, args.epochs, args.image_size, args.batch)
            print(f"cracknet train, {workers} worker(s), {label}: {rate:7.1f} images/s "
                  f"({rate / results[label]:.2f} x one process)", flush=True)
    print(json.dumps({k: round(v, 1) for k, v in results.items()}))


if __name__ == "__main__":
    main()
