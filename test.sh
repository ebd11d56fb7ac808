#!/usr/bin/env bash
# Set everything up and run the whole suite: lint, types, unit and integration tests on SQLite
# and PostgreSQL (127.0.0.1:5432, database `test`). With CI=true the PostgreSQL leg is mandatory.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh --test

# PostgreSQL is a service of this machine; start it if it is installed but stopped.
if ! .venv/bin/python -c 'import psycopg; psycopg.connect("postgresql://127.0.0.1:5432/test", connect_timeout=3).close()' 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null && ls /etc/postgresql >/dev/null 2>&1; then
    echo "==> starting PostgreSQL" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
fi

echo "==> ruff" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy" >&2
.venv/bin/mypy
echo "==> pytest" >&2
# One worker per core, each taking whole test files (their module-scoped servers stay in one
# process); tests share nothing else: free ports, temporary directories, a schema per test.
exec .venv/bin/pytest -n auto --dist loadfile "$@"
