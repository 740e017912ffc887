"""Where a CPU scoring run's time goes: each stage's own cost, and the CPU seconds of every process.

    .venv/bin/python bench/score_profile.py                    # 400 dev-set JPEGs at 224 px
    .venv/bin/python bench/score_profile.py --images 800 -- --num-actors 2

Part 1 runs the pipeline's own stage functions one after the other in this process (the functions Ray
runs: read and tile, the predictor, the table writer) on the same images, with the model's share of
the predictor timed apart, so each stage's cost per image is seen without Ray.
Part 2 runs `cracknet score` on those images (arguments after `--` are passed on) and samples the
CPU seconds (user + system) of the command and every process it starts, grouped by what the
process is (the driver, the model actor, read tasks, Ray's own services), against the CPU seconds
the machine had over the same wall time.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from score_throughput import cpu_name, make_images, make_model, process_tree, run_score

from cracknet.model.card import preprocessing_of, read_card  # noqa: E402
from cracknet.predict.scorer import CALL_TILES, tiling_of  # noqa: E402
from cracknet.score.pipeline import CrackPredictor, read_and_tile, write_parts  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def stage_costs(model_dir: str, paths: list[Path], out: Path, calls: int) -> dict[str, float]:
    """Seconds in each stage function for all the images, one after the other, in this process (model calls of
    ``calls`` tiles; 0: cracknet's default)."""
    card = read_card(model_dir)
    spec, tiling = preprocessing_of(card), tiling_of(card)
    uris = [str(p) for p in paths]
    seconds = collections.Counter()
    started = time.perf_counter()
    predictor = CrackPredictor(model_dir, card["model_id"], calls, tiling, threads=os.cpu_count() or 1)
    batch = max(calls, CALL_TILES)  # packs, as the pipeline makes them
    seconds["model load (once per actor)"] = time.perf_counter() - started
    warm = next(read_and_tile({"image_uri": uris[:batch], "version": [""] * batch}, spec, tiling, None, batch))
    predictor(warm)  # one warm-up call, as the actor has
    model_only = predictor.scorer.score
    timed = {"model": 0.0}

    def timed_score(images):
        begun = time.perf_counter()
        result = model_only(images)
        timed["model"] += time.perf_counter() - begun
        return result

    predictor.scorer.score = timed_score
    for start in range(0, len(uris), batch):
        chunk = {"image_uri": uris[start:start + batch], "version": [""] * len(uris[start:start + batch])}
        begun = time.perf_counter()
        packs = list(read_and_tile(chunk, spec, tiling, None, batch))
        seconds["read, decode, resize, tile (read tasks)"] += time.perf_counter() - begun
        for one in packs:
            begun = time.perf_counter()
            rows = predictor(one)
            seconds["predictor (actor)"] += time.perf_counter() - begun
            begun = time.perf_counter()
            write_parts(rows, str(out), "profile", "2026-01-01", card["model_id"], 0.5, "2026-01-01T00:00:00",
                        {})
            seconds["rows to Arrow and Parquet (writer)"] += time.perf_counter() - begun
    seconds["  of which the model"] = timed["model"]
    seconds["  of which the rest of the predictor (rows, image statistics)"] = \
        seconds["predictor (actor)"] - timed["model"]
    return dict(seconds)


def process_kind(pid: int, root: int) -> str:
    if pid == root:
        return "driver (cracknet score: planning, Ray Data's executor, commit)"
    try:
        title = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "gone"
    program = os.path.basename(title.split(" ", 1)[0])
    if program in ("raylet", "gcs_server"):
        return {"raylet": "raylet", "gcs_server": "GCS"}[program]
    if title.startswith("ray::"):  # a worker names the task or actor it runs (a fused stage names all of them)
        for marker, kind in (("CrackPredictor", "model actor (and any stage fused into it)"),
                             ("read_and_tile", "read tasks"), ("read_encoded", "read tasks"),
                             ("write_parts", "writer tasks"), ("read_plan", "plan reader"),
                             ("plan_run", "planning task")):
            if marker in title:
                return kind
        return "idle Ray workers"
    return "other Ray processes (log monitor, agents)"


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def profile_command(model_dir: str, inputs: Path, output: Path, extra: list[str]) -> tuple[float, str, dict]:
    """Run `cracknet score`; its wall seconds, its summary line and CPU seconds per kind of process."""
    last: dict[int, tuple[str, float]] = {}

    def sample(root: int):
        for pid in process_tree(root):
            try:
                used = cpu_seconds(pid)
            except OSError:
                continue
            kind = last.get(pid, ("", 0.0))[0]
            if not kind or kind.startswith(("idle", "other")):  # a worker's title changes with its task
                kind = process_kind(pid, root)
            last[pid] = (kind, used)

    wall, summary = run_score(model_dir, inputs, output, extra, sample)
    per_kind = collections.Counter()
    for kind, used in last.values():
        per_kind[kind] += used
    return wall, summary, dict(per_kind)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=0, help="tiles per model call (default: cracknet's)")
    parser.add_argument("extra", nargs="*", help="arguments for cracknet score, after --")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_images(tmp / "images", args.images)
        model_dir = make_model(tmp / "model", args.image_size)
        print(f"{args.images} JPEGs at {args.image_size} px on {os.cpu_count()} CPUs ({cpu_name()}):", flush=True)
        costs = stage_costs(model_dir, paths, tmp / "stage-results", args.batch_size)
        total = sum(v for k, v in costs.items() if not k.startswith(" ") and "once" not in k)
        print("1. each stage in one process, one after the other:")
        for name, secs in costs.items():
            print(f"   {name:64s} {secs:7.1f} s  {1000 * secs / args.images:7.1f} ms/image"
                  + ("" if name.startswith(" ") or "once" in name else f"  {100 * secs / total:5.1f}%"))
        print(f"   {'all stages':64s} {total:7.1f} s  {args.images / total:7.1f} images/s")

        extra = args.extra + (["--batch-size", str(args.batch_size)] if args.batch_size else [])
        wall, summary, per_kind = profile_command(model_dir, tmp / "images", tmp / "results", extra)
        print(f"2. cracknet score {' '.join(extra)}: {wall:.1f} s, {args.images / wall:.1f} images/s "
              f"(whole command)\n   {summary}")
        budget = wall * (os.cpu_count() or 1)
        for kind, used in sorted(per_kind.items(), key=lambda kv: -kv[1]):
            print(f"   {kind:64s} {used:7.1f} CPU s  {100 * used / budget:5.1f}% of the machine")
        used = sum(per_kind.values())
        print(f"   {'all processes':64s} {used:7.1f} CPU s  {100 * used / budget:5.1f}% of {budget:.0f} CPU s")
        print(json.dumps({"stages": costs, "command_seconds": wall, "cpu_seconds": per_kind}))


if __name__ == "__main__":
    main()
