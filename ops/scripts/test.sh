#!/usr/bin/env bash
# `make test`: lint, type-check, then the whole suite against a real local
# stack started here and always stopped again.
#
# The stack runs under its own SLUICE_HOME (.sluice-test) on its own ports, so
# a developer's running stack (make up) is left alone. State from an earlier
# run is wiped first (the Kafka jars are kept); Kafka, clamd, the warehouse,
# the worker and the gateway start fresh.
# Env: SLUICE_TEST_HOME (.sluice-test), SLUICE_TEST_PORT_BASE (19000),
#      PYTEST_ARGS (extra pytest arguments).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"

# Every port is SLUICE_TEST_PORT_BASE plus a fixed offset, so several test
# stacks (one per developer checkout) can share a machine.
BASE="${SLUICE_TEST_PORT_BASE:-19000}"
test_env() {
  cat <<ENV
export SLUICE_HOME="${SLUICE_TEST_HOME:-$REPO/.sluice-test}"
export SLUICE_KAFKA_BOOTSTRAP=127.0.0.1:$((BASE + 0))
export SLUICE_KAFKA_CONTROLLER_PORT=$((BASE + 1))
export SLUICE_CLAMD_PORT=$((BASE + 2))
export SLUICE_GATEWAY_LISTEN=127.0.0.1:$((BASE + 3))
export SLUICE_GATEWAY_URL=http://127.0.0.1:$((BASE + 3))
export SLUICE_WAREHOUSE_LISTEN=127.0.0.1:$((BASE + 4))
export SLUICE_WORKER_WEB_PORT=$((BASE + 5))
export SLUICE_WORKER_METRICS_PORT=$((BASE + 6))
export SLUICE_WAREHOUSE_METRICS_PORT=$((BASE + 7))
export SLUICE_RETRY_ATTEMPTS=3
export SLUICE_RETRY_BACKOFF_S=0.2
export SLUICE_RETRY_WAIT_MAX_S=20
export SLUICE_CLAMD_BREAKER_RESET_S=1
export SLUICE_REQUIRE_STACK=1
export SLUICE_POLICY_FILE="$REPO/tests/fixtures/policy.json"
export SLUICE_ROUTES_FILE="$REPO/tests/fixtures/routes.json"
export SLUICE_BULK_THRESHOLD_BYTES=1048576
ENV
}
# `test.sh --env` prints these settings, to run a test stack and single
# tests by hand: eval "$(ops/scripts/test.sh --env)"; ops/scripts/stack.sh up
if [[ ${1:-} == --env ]]; then
  test_env
  exit 0
fi
# Tests stop clamd on purpose (retries are short), and fail rather than skip
# when the stack they need is not there (SLUICE_REQUIRE_STACK).
eval "$(test_env)"

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
