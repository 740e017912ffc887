"""Scale: does a night's cost follow the night, or the history? Two nights of `cracknet score` per size.

    .venv/bin/python bench/results_scale.py                                # N = 100,000 and 1,000,000
    .venv/bin/python bench/results_scale.py --sizes 10000 100000 --new 2000

Night 1 scores a manifest of N images; night 2 a manifest of every image so far
(N + NEW), as a nightly job that lists a whole survey does. Every row is cheap:
the manifest names files that do not exist, so each becomes an error row and no
model time is spent; what is measured is planning, the pipeline and the commit.
Each night runs `cracknet score` in its own process (with its own local Ray),
sampling every 0.2 s the RSS of the driver and the summed RSS of the driver and
every process it started. Afterwards it checks that the table holds exactly one
row per image, and prints the table docs/benchmarks.md records.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from score_throughput import make_model


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children") as f:
                    children = [int(c) for c in f.read().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def night(model: Path, manifest: Path, results: Path) -> dict:
    """Run one night; its seconds, the driver's peak RSS and the process tree's peak summed RSS (MiB)."""
    command = [sys.executable, "-m", "cracknet.cli", "score", "--model", str(model), "--input", str(manifest),
               "--output", str(results), "--read-batch-size", "256", "--batch-size", "256"]
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    driver = tree = 0
    while proc.poll() is None:
        driver = max(driver, rss_kib(proc.pid))
        tree = max(tree, rss_kib(proc.pid) + sum(rss_kib(p) for p in descendants(proc.pid)))
        time.sleep(0.2)
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"cracknet score failed:\n{err[-3000:]}")
    summary = next(line for line in out.splitlines() if line.startswith("Scored"))
    return {"seconds": time.perf_counter() - started, "driver_mib": driver / 1024, "tree_mib": tree / 1024,
            "summary": summary}


def write_manifest(path: Path, folder: Path, count: int) -> None:
    """A Parquet manifest naming ``count`` images that do not exist, in 50 structure folders."""
    uris = pa.array([f"{folder}/site-{i % 50:02d}/img-{i:08d}.jpg" for i in range(count)], pa.string())
    pq.write_table(pa.table({"image_uri": uris}), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--new", type=int, default=20_000)
    args = parser.parse_args()

    from cracknet.table.query import run_query

    work = Path(tempfile.mkdtemp(prefix="cracknet-scale-"))
    model = make_model(work / "model", image_size=32)
    rows = []
    for n in args.sizes:
        folder = work / f"survey-{n}"
        folder.mkdir()
        results = work / f"results-{n}"
        write_manifest(folder / "night-1.parquet", folder, n)
        first = night(model, folder / "night-1.parquet", results)
        print(f"N={n:,} night 1: {first['summary']}", flush=True)
        write_manifest(folder / "night-2.parquet", folder, n + args.new)
        second = night(model, folder / "night-2.parquet", results)
        print(f"N={n:,} night 2: {second['summary']}", flush=True)
        (check,) = run_query(str(results), "SELECT count(*) AS n, count(DISTINCT image_uri) AS uris FROM images") \
            .to_pylist()
        assert check == {"n": n + args.new, "uris": n + args.new}, check
        rows.append((n, first, second))
    print(f"\nNEW = {args.new:,} images on night 2; every row an error row (no model time)")
    print("history N  | night 1 s | night 2 s | night 2 / 1 | driver peak MiB (1 / 2) | tree peak MiB (1 / 2)")
    for n, first, second in rows:
        print(f"{n:>10,} | {first['seconds']:>9.0f} | {second['seconds']:>9.0f} | "
              f"{second['seconds'] / first['seconds']:>11.2f} | {first['driver_mib']:>10,.0f} / "
              f"{second['driver_mib']:<10,.0f} | {first['tree_mib']:>8,.0f} / {second['tree_mib']:<8,.0f}")
    if len(rows) > 1:
        low, high = rows[0], rows[-1]
        peak = lambda r: max(r[1]["driver_mib"], r[2]["driver_mib"])  # noqa: E731
        print(f"\ndriver peak, N={high[0]:,} vs N={low[0]:,}: {peak(high) / peak(low):.2f}x")


if __name__ == "__main__":
    main()
