#!/usr/bin/env bash
# `make test`: lint, type-check, then the whole suite against a real local
# stack started here and always stopped again.
#
# The stack runs under its own SLUICE_HOME (.sluice-test) on its own ports, so
# a developer's running stack (make up) is left alone. State from an earlier
# run is wiped first (the Kafka jars are kept); Kafka, clamd, the warehouse,
# the worker and the gateway start fresh.
# Env: SLUICE_TEST_HOME (.sluice-test), PYTEST_ARGS (extra pytest arguments).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"

export SLUICE_HOME="${SLUICE_TEST_HOME:-$REPO/.sluice-test}"
export SLUICE_KAFKA_BOOTSTRAP=127.0.0.1:19092
export SLUICE_KAFKA_CONTROLLER_PORT=19093
export SLUICE_CLAMD_PORT=13310
export SLUICE_GATEWAY_LISTEN=127.0.0.1:18080
export SLUICE_GATEWAY_URL=http://127.0.0.1:18080
export SLUICE_WAREHOUSE_LISTEN=127.0.0.1:18124
export SLUICE_WORKER_WEB_PORT=16066
export SLUICE_WORKER_METRICS_PORT=19101
export SLUICE_WAREHOUSE_METRICS_PORT=19102
# Tests stop clamd on purpose: give up on a scan quickly.
export SLUICE_RETRY_ATTEMPTS=3
export SLUICE_RETRY_BACKOFF_S=0.2
# Tests fail, rather than skip, when the stack they need is not there.
export SLUICE_REQUIRE_STACK=1

VENV="${SLUICE_VENV:-$REPO/.venv}"
STACK="$REPO/ops/scripts/stack.sh"

echo "== lint"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
echo "== typecheck"
"$VENV/bin/mypy"

echo "== stack (SLUICE_HOME=$SLUICE_HOME)"
"$STACK" down >/dev/null 2>&1 || true
if [[ -d $SLUICE_HOME ]]; then
  find "$SLUICE_HOME" -mindepth 1 -maxdepth 1 ! -name kafka -exec rm -rf {} +
  rm -rf "$SLUICE_HOME/kafka/data" "$SLUICE_HOME/kafka/cluster.id"
fi
trap '"$STACK" down >/dev/null 2>&1 || true' EXIT
"$STACK" up

echo "== tests"
# shellcheck disable=SC2086  # PYTEST_ARGS is a list of words on purpose
"$VENV/bin/pytest" ${PYTEST_ARGS:-} tests
