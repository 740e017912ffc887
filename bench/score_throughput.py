"""Scoring speed and memory: the model alone, a plain PyTorch loop, and `cracknet score`, in one run.

    .venv/bin/python bench/score_throughput.py                 # 3,000 dev-set JPEGs at 224 px
    .venv/bin/python bench/score_throughput.py --images 2000 --memory-images 500

Prints images/s for (a) the model alone on pre-decoded tensors (the ceiling),
(b) a plain single-process loop with PIL decoding and the same preprocessing
(what a user would write instead), (c) `cracknet score` end to end on a local
Ray, with the ratios c/b and c/a; then the peak memory (summed PSS of the
scoring process and every process it started, Ray's included) for N and 10 x N
images at a small image size. The images are the dev set's JPEGs, repeated
under new names when more are asked for; without the dev set, generated ones.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cracknet.engine import Precision  # noqa: E402
from cracknet.model import build_model, load_artifact, preprocessing_of, save_artifact  # noqa: E402
from cracknet.synthetic import concrete, image_bytes  # noqa: E402
from cracknet.transforms import IMAGENET_MEAN, IMAGENET_STD, decode, eval_preset  # noqa: E402

DEV_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "metu-dev"
BATCH = 64


def make_images(folder: Path, count: int) -> list[Path]:
    sources = sorted(DEV_DATA.rglob("*.jpg")) if DEV_DATA.is_dir() else []
    paths = []
    rng = np.random.default_rng(0)
    for i in range(count):
        path = folder / f"structure-{i % 10}" / f"img-{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        if sources:
            shutil.copyfile(sources[i % len(sources)], path)
        else:
            path.write_bytes(image_bytes(concrete(rng, 227)))
        paths.append(path)
    return paths


def make_model(folder: Path, image_size: int) -> str:
    save_artifact(str(folder), build_model().state_dict(),
                  {"preprocessing": {"image_size": image_size, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                                     "source_size": 227}, "threshold": 0.5})
    return str(folder)


def model_alone(model_dir: str, paths: list[Path], precision: Precision) -> float:
    """The model on pre-decoded tensors, run the way cracknet runs it (after one warm-up batch)."""
    model, card = load_artifact(model_dir)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    spec = preprocessing_of(card)
    images = torch.from_numpy(np.stack([decode(p.read_bytes(), spec) for p in paths]))
    device = torch.device("cpu")
    with torch.no_grad(), precision.autocast(device):
        model(precision.inputs(eval_preset(images[:BATCH], spec)))
        started = time.perf_counter()
        for start in range(0, len(images), BATCH):
            model(precision.inputs(eval_preset(images[start:start + BATCH], spec)))
    return len(images) / (time.perf_counter() - started)


def plain_loop(model_dir: str, paths: list[Path]) -> float:
    """What a user would write: float32, default memory format, decode then predict, one process."""
    started = time.perf_counter()
    model, card = load_artifact(model_dir)
    spec = preprocessing_of(card)
    with torch.no_grad():
        for start in range(0, len(paths), BATCH):
            batch = np.stack([decode(p.read_bytes(), spec) for p in paths[start:start + BATCH]])
            torch.sigmoid(model(eval_preset(torch.from_numpy(batch), spec)))
    return len(paths) / (time.perf_counter() - started)


def tree_pss_kib(root: int) -> int:
    """Summed proportional set size of a process and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            for line in open(f"/proc/{pid}/smaps_rollup"):
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def score_process(model_dir: str, inputs, output, *extra: str) -> tuple[float, float, int]:
    """Run `cracknet score` in its own process (with its own local Ray).

    Returns images/s over the whole command (Python and Ray start-up included),
    images/s over the streaming pipeline alone, and the peak PSS in KiB.
    """
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "cracknet.cli", "score", "--model", model_dir,
                             "--input", str(inputs), "--output", str(output), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "RAY_ADDRESS": ""})
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_pss_kib(proc.pid))
            time.sleep(0.25)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, _ = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"cracknet score failed:\n{out[-3000:]}")
    summary = next(line for line in out.splitlines() if line.startswith("Scored"))
    print("   ", summary, flush=True)
    scored = int(re.search(r"Scored (\d+) images", summary).group(1))
    pipeline = float(re.search(r"\(([\d.]+) s in the pipeline\)", summary).group(1))
    return scored / (time.perf_counter() - started), scored / pipeline, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--memory-images", type=int, default=500, help="N for the memory check (also 10 x N)")
    parser.add_argument("--memory-image-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_images(tmp / "speed", args.images)
        model_dir = make_model(tmp / "model", args.image_size)
        print(f"{args.images} JPEGs at {args.image_size} px on {os.cpu_count()} CPUs, "
              f"{'CUDA' if torch.cuda.is_available() else 'no GPU'}:", flush=True)
        precision = Precision.for_inference(torch.device("cpu"))
        a = model_alone(model_dir, paths, precision)
        print(f"(a) model alone on decoded tensors: {a:7.1f} images/s   (channels_last, "
              f"{'bf16' if precision.autocast_dtype else 'float32'}: cracknet's inference settings here)", flush=True)
        b = plain_loop(model_dir, paths)
        print(f"(b) plain loop, PIL decode + model: {b:7.1f} images/s", flush=True)
        whole, c, _ = score_process(model_dir, tmp / "speed", tmp / "results-speed")
        print(f"(c) cracknet score, pipeline:       {c:7.1f} images/s   c/b = {c / b:.2f}   c/a = {c / a:.2f}\n"
              f"    (whole command, Ray start-up included: {whole:.1f} images/s)", flush=True)

        small_model = make_model(tmp / "small-model", args.memory_image_size)
        n = args.memory_images
        make_images(tmp / "memory-10n", 10 * n)
        small = tmp / "memory-n"
        small.mkdir()
        for i in range(10):  # the first N of the 10 x N images
            if i * (n // 10) < n:
                shutil.copytree(tmp / "memory-10n" / f"structure-{i}", small / f"structure-{i}",
                                ignore=lambda d, names, lim=n // 10: sorted(names)[lim:])
        *_, peak_n = score_process(small_model, small, tmp / "results-n")
        *_, peak_10n = score_process(small_model, tmp / "memory-10n", tmp / "results-10n")
        print(f"peak memory at {args.memory_image_size} px: {n} images {peak_n / 1024:.0f} MiB, "
              f"{10 * n} images {peak_10n / 1024:.0f} MiB, ratio {peak_10n / peak_n:.2f}")


if __name__ == "__main__":
    main()
