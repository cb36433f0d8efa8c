#!/usr/bin/env bash
# The whole test suite: unit tests (pure code) and integration tests against a real dockerd,
# HAProxy, wrk and PostgreSQL. Installs and starts what it needs first. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/prereqs.sh

# PostgreSQL, for the ledger's PostgreSQL tests.
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
read -r PG_VERSION PG_CLUSTER < <(pg_lsclusters -h | awk 'NR==1 {print $1, $2}')
pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start 2>/dev/null || true
for _ in $(seq 30); do su postgres -c 'psql -qAtc "SELECT 1"' >/dev/null 2>&1 && break; sleep 0.5; done
su postgres -c "psql -qAtc \"SELECT 1 FROM pg_roles WHERE rolname='kiln'\"" | grep -q 1 ||
  su postgres -c "psql -qc \"CREATE ROLE kiln LOGIN SUPERUSER PASSWORD 'kiln'\""
export KILN_TEST_POSTGRES_URL=postgresql+psycopg://kiln:kiln@127.0.0.1/postgres

.venv/bin/kiln base build -f examples/hello/kiln.yaml   # cached after the first run
.venv/bin/ruff check src tests
.venv/bin/mypy   # strict (pyproject.toml): the protocols between layers are checked, so fakes cannot drift
.venv/bin/lint-imports   # the layers and boundaries of ARCHITECTURE.md (pyproject.toml's contracts)
exec .venv/bin/python -m pytest tests "$@"
