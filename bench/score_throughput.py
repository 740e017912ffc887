"""Scoring speed and memory: the model alone, a plain PyTorch loop, and `cracknet score`, in one run.

    .venv/bin/python bench/score_throughput.py                 # 1,000 dev-set JPEGs at 224 px
    .venv/bin/python bench/score_throughput.py --images 3000 --memory-images 500
    .venv/bin/python bench/score_throughput.py -- --compile   # arguments after -- go to cracknet score

Prints images/s for (a) the model alone on pre-decoded tensors, run the way cracknet runs it (the
ceiling), (b) a plain single-process loop: PIL decode, the same preprocessing, the model in
channels_last, batches of 32, timed over the loop alone (what a user would write instead), (c)
`cracknet score` end to end on a local Ray: the whole command (Python and Ray start-up, planning,
commit), and its steady state, from two runs on N/2 and N images (the difference between them is N/2
images' worth of scoring, with every fixed cost cancelled), with the ratios to (a) and (b); then the
peak memory (summed PSS of the scoring process and every process it started, Ray's included) for N
and 10 x N images at a small image size. The images are the dev set's JPEGs, repeated under new
names when more are asked for; without the dev set, generated ones.
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
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cracknet.demo.synthetic import concrete, image_bytes  # noqa: E402
from cracknet.images.decoding import IMAGENET_MEAN, IMAGENET_STD, decode, eval_preset  # noqa: E402
from cracknet.model.card import preprocessing_of  # noqa: E402
from cracknet.model.network import build_model, load_artifact, save_artifact  # noqa: E402
from cracknet.model.precision import Precision  # noqa: E402
from cracknet.predict.scorer import call_tiles  # noqa: E402

DEV_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "metu-dev"
PLAIN_BATCH = 32


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


def model_alone(model_dir: str, paths: list[Path], precision: Precision) -> tuple[float, int]:
    """The model on pre-decoded tensors, run the way cracknet runs it (its call size, after one warm-up call).
    Returns images/s and the call size."""
    model, card = load_artifact(model_dir)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    spec = preprocessing_of(card)
    call = call_tiles(torch.device("cpu"), precision)
    images = torch.from_numpy(np.stack([decode(p.read_bytes(), spec) for p in paths]))
    device = torch.device("cpu")
    with torch.no_grad(), precision.autocast(device):
        model(precision.inputs(eval_preset(images[:call], spec)))
        started = time.perf_counter()
        for start in range(0, len(images), call):
            model(precision.inputs(eval_preset(images[start:start + call], spec)))
    return len(images) / (time.perf_counter() - started), call


def plain_loop(model_dir: str, paths: list[Path]) -> float:
    """What a user would write: decode then predict, one process, float32, channels_last, batches of 32; timed
    over the loop alone (the model loaded and one batch run first)."""
    model, card = load_artifact(model_dir)
    model = model.to(memory_format=torch.channels_last)
    spec = preprocessing_of(card)

    def batch_of(chunk):
        x = eval_preset(torch.from_numpy(np.stack([decode(p.read_bytes(), spec) for p in chunk])), spec)
        return x.contiguous(memory_format=torch.channels_last)

    with torch.no_grad():
        model(batch_of(paths[:PLAIN_BATCH]))
        started = time.perf_counter()
        for start in range(0, len(paths), PLAIN_BATCH):
            torch.sigmoid(model(batch_of(paths[start:start + PLAIN_BATCH])))
    return len(paths) / (time.perf_counter() - started)


def process_tree(root: int) -> list[int]:
    """A process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    found, stack = [], [root]
    while stack:
        found.append(stack.pop())
        stack.extend(children.get(found[-1], []))
    return found


def tree_pss_kib(root: int) -> int:
    """Summed proportional set size of a process and all its descendants."""
    total = 0
    for pid in process_tree(root):
        try:
            for line in open(f"/proc/{pid}/smaps_rollup"):
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def run_score(model_dir: str, inputs, output, extra, sample: Callable[[int], None]) -> tuple[float, str]:
    """Run `cracknet score` in its own process (with its own local Ray), calling ``sample(pid)`` about four
    times a second while it runs. Returns the whole command's seconds and its summary line."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "cracknet.cli", "score", "--model", model_dir,
                             "--input", str(inputs), "--output", str(output), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "RAY_ADDRESS": ""})
    done = threading.Event()

    def sampling():
        while not done.is_set():
            sample(proc.pid)
            time.sleep(0.25)

    sampler = threading.Thread(target=sampling)
    sampler.start()
    out, _ = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"cracknet score failed:\n{out[-3000:]}")
    return time.perf_counter() - started, next(line for line in out.splitlines() if line.startswith("Scored"))


def score_process(model_dir: str, inputs, output, *extra: str, seconds: bool = False) -> tuple:
    """`cracknet score` with its memory sampled: images/s over the whole command (Python and Ray start-up
    included), images/s over the streaming pipeline alone, the peak PSS in KiB, and with ``seconds`` the whole
    command's seconds."""
    peak = 0

    def sample(pid: int):
        nonlocal peak
        peak = max(peak, tree_pss_kib(pid))

    took, summary = run_score(model_dir, inputs, output, extra, sample)
    print("   ", summary, flush=True)
    scored = int(re.search(r"Scored (\d+) images", summary).group(1))
    pipeline = float(re.search(r"\(([\d.]+) s in the pipeline\)", summary).group(1))
    return (scored / took, scored / pipeline, peak) + ((took,) if seconds else ())


def subset(source: Path, target: Path, count: int) -> Path:
    """The first ``count`` images of ``source`` (made by ``make_images``), linked under ``target``."""
    for path in sorted(source.rglob("*.jpg"))[:count]:
        link = target / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, link)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--memory-images", type=int, default=500, help="N for the memory check (also 10 x N)")
    parser.add_argument("--memory-image-size", type=int, default=32)
    parser.add_argument("--no-memory", action="store_true", help="skip the memory check")
    parser.add_argument("extra", nargs="*", help="arguments for cracknet score, after --")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_images(tmp / "speed", args.images)
        model_dir = make_model(tmp / "model", args.image_size)
        print(f"{args.images} JPEGs at {args.image_size} px on {os.cpu_count()} CPUs ({cpu_name()}), "
              f"{'CUDA' if torch.cuda.is_available() else 'no GPU'}:", flush=True)
        precision = Precision.for_inference(torch.device("cpu"))
        a, call = model_alone(model_dir, paths, precision)
        print(f"(a) model alone on decoded tensors: {a:7.1f} images/s   (channels_last, "
              f"{'bf16' if precision.autocast_dtype else 'float32'}, calls of {call}: cracknet's inference settings "
              "here)", flush=True)
        b = plain_loop(model_dir, paths)
        print(f"(b) plain loop, PIL decode + model: {b:7.1f} images/s   (float32, channels_last, batches of "
              f"{PLAIN_BATCH}, the loop alone)", flush=True)
        half = args.images // 2
        *_, half_seconds = score_process(model_dir, subset(tmp / "speed", tmp / "half", half), tmp / "results-half",
                                         *args.extra, seconds=True)
        whole, _, _, seconds = score_process(model_dir, tmp / "speed", tmp / "results-speed", *args.extra,
                                             seconds=True)
        steady = (args.images - half) / (seconds - half_seconds)
        fixed = seconds - args.images / steady
        print(f"(c) cracknet score {' '.join(args.extra)}\n"
              f"    whole command:  {whole:7.1f} images/s   c/b = {whole / b:.2f}   c/a = {whole / a:.2f}\n"
              f"    steady state:   {steady:7.1f} images/s   c/b = {steady / b:.2f}   c/a = {steady / a:.2f}"
              f"   (fixed cost {fixed:.1f} s of {seconds:.1f} s)", flush=True)
        if args.no_memory:
            return

        small_model = make_model(tmp / "small-model", args.memory_image_size)
        n = args.memory_images
        make_images(tmp / "memory-10n", 10 * n)
        small = subset(tmp / "memory-10n", tmp / "memory-n", n)
        *_, peak_n = score_process(small_model, small, tmp / "results-n")
        *_, peak_10n = score_process(small_model, tmp / "memory-10n", tmp / "results-10n")
        print(f"peak memory at {args.memory_image_size} px: {n} images {peak_n / 1024:.0f} MiB, "
              f"{10 * n} images {peak_10n / 1024:.0f} MiB, ratio {peak_10n / peak_n:.2f}")


def cpu_name() -> str:
    names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
    bf16 = "avx512_bf16" in open("/proc/cpuinfo").read()
    return f"{names[0] if names else 'unknown CPU'}, {'with' if bf16 else 'without'} AVX512-BF16"


if __name__ == "__main__":
    main()
