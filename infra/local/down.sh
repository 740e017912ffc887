#!/usr/bin/env bash
# Stop the local stack started by up.sh.
# Options: python infra/local/stack.py down --help
set -euo pipefail
cd "$(dirname "$0")/../.."
make --quiet install
exec .venv/bin/python infra/local/stack.py down "$@"
