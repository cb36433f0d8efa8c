#!/usr/bin/env bash
# The whole test suite: unit tests (pure code) and integration tests against a real dockerd,
# HAProxy and wrk. Installs and starts what it needs first. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/prereqs.sh
.venv/bin/kiln base build -f examples/hello/kiln.yaml   # cached after the first run
exec .venv/bin/python -m pytest tests "$@"
