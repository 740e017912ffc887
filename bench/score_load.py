"""Load: score 100,000 small generated images from an S3 endpoint, exactly once, with flat memory.

    .venv/bin/python bench/score_load.py                       # 10,000 then 100,000 images
    .venv/bin/python bench/score_load.py --sizes 2000 20000

Starts moto's S3 server on a free localhost port, uploads N generated 32 px
JPEGs per size, runs `cracknet score` (its own local Ray) on the prefix, then
checks through `cracknet query` that every image has exactly one row and no
error. Prints, per size: upload and scoring time, images/s, and the peak memory
(summed PSS of the scoring process and every process it started), and the
ratio of the largest run's peak memory to the smallest's.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from score_throughput import make_model, score_process

BUCKET = "cracknet-load"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3(log: Path) -> subprocess.Popen:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="load",
                      AWS_SECRET_ACCESS_KEY="load", AWS_DEFAULT_REGION="us-east-1")
    for _ in range(300):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.1)
    raise SystemExit("The S3 endpoint did not start.")


def upload(prefix: str, count: int) -> float:
    from cracknet.demo.synthetic import concrete, draw_crack, image_bytes
    from cracknet.storage import s3_client

    client = s3_client()
    started = time.perf_counter()

    def put(start: int) -> None:
        rng = np.random.default_rng(start)
        for i in range(start, min(start + 500, count)):
            img = concrete(rng, 32)
            if i % 4 == 0:
                draw_crack(img, rng)
            client.put_object(Bucket=BUCKET, Key=f"{prefix}/site-{i % 50:02d}/img-{i:06d}.jpg", Body=image_bytes(img))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(0, count, 500)))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()

    from cracknet.storage import s3_client
    from cracknet.table.query import run_query

    work = Path(tempfile.mkdtemp(prefix="cracknet-load-"))
    s3 = start_s3(work / "moto.log")
    try:
        s3_client().create_bucket(Bucket=BUCKET)
        model = make_model(work / "model", image_size=32)
        rows = []
        for n in args.sizes:
            inputs, results = f"s3://{BUCKET}/survey-{n}", f"s3://{BUCKET}/results-{n}"
            upload_s = upload(f"survey-{n}", n)
            print(f"{n:,} images uploaded in {upload_s:.0f} s; scoring ...", flush=True)
            started = time.perf_counter()
            per_s, pipeline_per_s, peak_kib = score_process(model, inputs, results, "--batch-size", "256",
                                                            "--read-batch-size", "64")
            seconds = time.perf_counter() - started
            (check,) = run_query(results, "SELECT count(*) AS n, count(DISTINCT image_uri) AS uris, "
                                          "count(error) AS errors FROM images").to_pylist()
            assert check == {"n": n, "uris": n, "errors": 0}, check
            rows.append((n, seconds, per_s, pipeline_per_s, peak_kib / 1024))
            print(f"    exactly once: {check}", flush=True)
        print("\nimages    | scoring s | images/s (command) | images/s (pipeline) | peak PSS MiB")
        for n, seconds, per_s, pipeline_per_s, peak in rows:
            print(f"{n:>9,} | {seconds:>9.0f} | {per_s:>18.1f} | {pipeline_per_s:>19.1f} | {peak:>12,.0f}")
        print(f"\npeak memory, {rows[-1][0]:,} vs {rows[0][0]:,} images: {rows[-1][4] / rows[0][4]:.2f}x")
    finally:
        s3.terminate()
        s3.wait()


if __name__ == "__main__":
    main()
