"""Ray job entrypoint for maintenance of the results table; the same code path as `cracknet compact`.

    ray job submit --working-dir . -- python jobs/compact.py --results s3://survey/results
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cracknet.cli import main

if __name__ == "__main__":
    sys.exit(main(["compact", *sys.argv[1:]]))
