#!/usr/bin/env bash
# The test command (README "Run the tests"; .ci/run runs exactly this).
# Installs everything it needs into ./.venv and tests/js/node_modules, then runs
# ruff, mypy, the import layers and the whole pytest suite (real Synapse, real SMTP, SQLite and
# PostgreSQL). Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'

# The Element-stack client (matrix-js-sdk + Rust crypto) used by the cross-signing tests.
if command -v npm >/dev/null 2>&1; then
  (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
elif [ -n "${CI:-}" ]; then
  echo "npm is required in CI for the Element-stack tests" >&2
  exit 1
fi

# PostgreSQL: CI machines run it on 127.0.0.1:5432 (trust auth, database `test`).
if [ -z "${HUB_TEST_DATABASE_URL:-}" ]; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
      pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
      for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
    fi
  fi
  if command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    export HUB_TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:5432/test"
  fi
fi

.venv/bin/ruff check hub tests bench
.venv/bin/mypy
# The layers (pyproject [tool.importlinter]): core pure, adapters below features, no nio in features.
.venv/bin/lint-imports
if [ "$#" -gt 0 ]; then  # a chosen subset: just that
  exec .venv/bin/python -m pytest "$@"
fi

# The rate-limit test spends about 110 s waiting on Synapse's limiter (30 messages
# at its default 0.2/s after a burst of 10) and uses almost no CPU meanwhile. It runs
# beside the rest of the suite, in a pytest session of its own (it starts its own
# Synapse anyway), instead of adding those two minutes at the end.
beside=tests/live/test_ratelimit_live.py
beside_log=$(mktemp)
.venv/bin/python -m pytest -q -p no:cacheprovider "$beside" >"$beside_log" 2>&1 &
beside_pid=$!
status=0
# Two workers (pytest-xdist), a test file each at a time: each worker starts its own Synapse
# once (the session fixture) and the files' module fixtures stay on one worker. Tests that
# bound a time on this machine (marked `serial`) run afterwards, alone.
workers=${HUB_TEST_WORKERS:-2}
.venv/bin/python -m pytest -n "$workers" --dist loadfile -m "not serial" --ignore="$beside" || status=$?
.venv/bin/python -m pytest -m serial --ignore="$beside" || status=$?
beside_status=0
wait "$beside_pid" || beside_status=$?
echo "--- $beside (run beside the suite) ---"
cat "$beside_log"
rm -f "$beside_log"
[ "$status" -eq 0 ] && [ "$beside_status" -eq 0 ]
