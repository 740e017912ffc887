"""Ray job entrypoint for scoring; the same code path as `cracknet score`.

    ray job submit --working-dir . -- python jobs/score.py \
        --model s3://bucket/runs/2026-11-25 --input s3://survey/incoming/ --output s3://survey/results
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cracknet.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
