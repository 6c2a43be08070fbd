#!/usr/bin/env bash
# Install pvepstore on Debian 12 and read the real pstore image bundled with it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh
exec .venv/bin/pvepstore parse --sample "$@"
