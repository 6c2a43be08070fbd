#!/usr/bin/env bash
# Install everything the test suite needs on Debian 12, then run the whole suite.
# Extra arguments go to pytest (e.g. tools/test.sh -m 'not kernel').
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh --test
exec .venv/bin/python -m pytest "$@"
