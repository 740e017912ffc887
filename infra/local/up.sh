#!/usr/bin/env bash
# Start the local stack (Ray head with token auth + S3 endpoint), upload samples, print the job commands.
# Options: python infra/local/stack.py up --help
set -euo pipefail
cd "$(dirname "$0")/../.."
make --quiet install
exec .venv/bin/python infra/local/stack.py up "$@"
