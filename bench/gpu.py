"""cracknet on one accelerator, without Ray: the model's ceiling, a plain loop, cracknet's scorer, training steps.

    python bench/gpu.py                       # on the GPU it finds; says so and exits 0 where there is none
    python bench/gpu.py --images DIR --size 224 --seconds 15
    python bench/gpu.py --device cpu          # the same measurements on the CPU (a smoke run)

Prints one table, images/s at ``--size`` px on real JPEGs (the dev set's, or any folder of JPEGs; a few
hundred are read once and repeated in memory):

  (a) the model alone on pre-decoded tensors, bf16 + channels_last: eager, and with torch.compile (the ceiling)
  (b) a plain PyTorch loop decoding with PIL on the CPU, same model settings
  (c) cracknet's scorer end to end from JPEG bytes: decoding on the device (torchvision's decode_jpeg,
      nvJPEG on a GPU) in batches, tiling, batching by tiles
  (d) cracknet's train_one_epoch against a plain training loop (same model, optimiser, precision)
  (e) train_one_epoch under a one-process DistributedDataParallel (NCCL on a GPU, gloo on a CPU)

and compares (c)'s probabilities and verdicts with cracknet's CPU path on the same images. Needs torch,
torchvision, numpy, pillow and pyarrow; no Ray. Every figure is measured, none estimated.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cracknet.images.decoding import Preprocessing, decode, decode_tiles, eval_preset  # noqa: E402
from cracknet.model.network import build_model  # noqa: E402
from cracknet.model.precision import Precision  # noqa: E402
from cracknet.predict.scorer import Scorer, Tiling, tiles_on_device  # noqa: E402
from cracknet.train.epoch import train_one_epoch  # noqa: E402

DEV_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "metu-dev"


def jpegs(folder: Path, count: int) -> tuple[list[bytes], list[int]]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[:count]
    if not paths:
        raise SystemExit(f"No JPEGs under {folder}; pass --images DIR.")
    return [p.read_bytes() for p in paths], [int("crack" in p.parent.name and "no" not in p.parent.name)
                                              for p in paths]


def timed(step, items_per_call: int, seconds: float, sync) -> float:
    """Images/s of ``step`` over about ``seconds``, after two warm-up calls."""
    step()
    step()
    sync()
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        calls += 1
    sync()
    return calls * items_per_call / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEV_DATA)
    parser.add_argument("--count", type=int, default=400, help="JPEGs read from --images (repeated as needed)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=15.0, help="per measurement")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()

    if args.device == "cuda" and not torch.cuda.is_available():
        print("No GPU here (torch.cuda.is_available() is False): nothing measured. "
              "Run with --device cpu for the same measurements on the CPU.")
        return 0
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    datas, labels = jpegs(args.images, args.count)
    spec = Preprocessing(args.size)
    tiling = Tiling(max(args.size, 227))  # patches of the dev set are scored whole, as in training
    batch = args.batch
    torch.manual_seed(0)
    model = build_model().to(device).eval().to(memory_format=torch.channels_last)
    precision = Precision.for_inference(device)
    print(f"{name}; torch {torch.__version__}; {len(datas)} JPEGs at {args.size} px, batch {batch}, "
          f"{'bf16' if precision.autocast_dtype else 'float32'} + channels_last", flush=True)
    rows: list[tuple[str, float, str]] = []

    # (a) the model alone on decoded tensors already on the device
    decoded = torch.from_numpy(np.stack([decode(d, spec) for d in datas]))
    picks = torch.arange(batch) % len(decoded)
    x = precision.inputs(eval_preset(decoded[picks].to(device), spec))

    def forward(net):
        def step():
            with torch.no_grad(), precision.autocast(device):
                net(x)
        return step

    a = timed(forward(model), batch, args.seconds, sync)
    rows.append(("(a) model alone, eager", a, "the ceiling"))
    if not args.no_compile:
        started = time.perf_counter()
        compiled = torch.compile(model)
        forward(compiled)()
        sync()
        compile_s = time.perf_counter() - started
        a_compiled = timed(forward(compiled), batch, args.seconds, sync)
        rows.append(("(a) model alone, torch.compile", a_compiled, f"compiled in {compile_s:.0f} s"))

    # (b) a plain loop: PIL decode on the CPU, then the same model
    import io

    from PIL import Image

    def plain_batch():
        images = []
        for k in range(batch):
            img = Image.open(io.BytesIO(datas[k % len(datas)])).convert("RGB").resize((args.size, args.size))
            images.append(np.asarray(img))
        inputs = precision.inputs(eval_preset(torch.from_numpy(np.stack(images)).to(device), spec))
        with torch.no_grad(), precision.autocast(device):
            torch.sigmoid(model(inputs).float()).cpu()

    b = timed(plain_batch, batch, args.seconds, sync)
    rows.append(("(b) plain loop, PIL decode on the CPU", b, f"b/a = {b / a:.2f}"))

    # (c) cracknet's scorer from JPEG bytes, decoding and tiling on the device
    scorer = Scorer(model, spec, device=device, precision=precision, tiling=tiling, batch_tiles=batch)
    chunk = [datas[k % len(datas)] for k in range(batch)]

    def scorer_batch():
        found = tiles_on_device(chunk, spec, tiling, device)
        tiles = [f[2] if f is not None else decode_tiles(d, spec, tiling.size, tiling.overlap)[2]
                 for f, d in zip(found, chunk)]
        scorer.score(tiles)

    c = timed(scorer_batch, batch, args.seconds, sync)
    on_device = sum(f is not None for f in tiles_on_device(chunk, spec, tiling, device))
    rows.append(("(c) cracknet scorer, JPEG bytes in", c, f"c/a = {c / a:.2f}; {on_device}/{batch} decoded "
                                                         f"on the device"))

    # (d) training steps: train_one_epoch against a plain loop, same model, optimiser and precision
    train_precision = Precision.for_training(device)
    train_model = build_model().to(device).to(memory_format=torch.channels_last)
    train_batch = min(batch, 128)
    uint8_batch = decoded[torch.arange(train_batch) % len(decoded)].to(device)
    targets = torch.tensor([labels[k % len(labels)] for k in range(train_batch)], device=device)
    optimizer = torch.optim.AdamW(train_model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)

    def cracknet_steps(net, steps=4):
        def step():
            train_one_epoch(net, [{"image": uint8_batch, "label": targets}] * steps, optimizer, spec, device,
                            generator, lambda _: 1e-4, train_precision)
        return step

    def plain_steps(steps=4):
        def step():
            train_model.train()
            for _ in range(steps):
                inputs = train_precision.inputs(eval_preset(uint8_batch, spec))
                with train_precision.autocast(device):
                    logits = train_model(inputs).squeeze(1)
                loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return step

    plain = timed(plain_steps(), 4 * train_batch, args.seconds, sync)
    ours = timed(cracknet_steps(train_model), 4 * train_batch, args.seconds, sync)
    rows.append(("(d) plain training loop", plain, f"batch {train_batch}"))
    rows.append(("(d) cracknet train_one_epoch", ours, f"d/plain = {ours / plain:.2f}"))

    # (e) the same under a one-process DistributedDataParallel
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(train_model, device_ids=[device.index or 0]
                                                        if device.type == "cuda" else None)
        e = timed(cracknet_steps(ddp), 4 * train_batch, args.seconds, sync)
        rows.append((f"(e) train_one_epoch under DDP ({backend}, 1 process)", e, f"e/d = {e / ours:.2f}"))
    finally:
        torch.distributed.destroy_process_group()

    # (c)'s numbers against cracknet's CPU path on the same images
    sample = datas[:min(len(datas), 200)]
    found = tiles_on_device(sample, spec, tiling, device)
    device_tiles = [f[2] if f is not None else decode_tiles(d, spec, tiling.size, tiling.overlap)[2]
                    for f, d in zip(found, sample)]
    cpu_tiles = [decode_tiles(d, spec, tiling.size, tiling.overlap)[2] for d in sample]
    p_device, _ = scorer.score(device_tiles)
    p_cpu, _ = scorer.score(cpu_tiles)

    width = max(len(r[0]) for r in rows)
    print(f"\n{'':{width}}  images/s")
    for label, value, note in rows:
        print(f"{label:{width}}  {value:8.1f}   {note}")
    print(f"\n(c) against the CPU decoding path on {len(sample)} images: largest probability difference "
          f"{np.abs(p_device - p_cpu).max():.4f}, verdicts at 0.5 equal for "
          f"{int(((p_device >= 0.5) == (p_cpu >= 0.5)).sum())}/{len(sample)} (random-init model)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
