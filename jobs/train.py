"""Ray job entrypoint for training; the same code path as `cracknet train`.

    ray job submit --working-dir . -- python jobs/train.py \
        --data s3://bucket/crack-data --output s3://bucket/runs/2026-11-25 --num-workers 4 --use-gpu
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cracknet.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
