#!/usr/bin/env bash
# Idempotent setup of everything the local stack needs on a fresh Debian 12
# machine (root, Java 17, Maven, Python 3.11): system packages, the project's
# virtualenv, and Kafka's jars. Each step is skipped when already done.
# Env: SLUICE_HOME (.sluice), PYTHON (python3.11), SLUICE_VENV (.venv).
set -euo pipefail
# shellcheck source=ops/scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

APT_PACKAGES=(clamav-daemon clamav-testfiles libmagic1 netcat-openbsd shared-mime-info debconf zip)
PYTHON="${PYTHON:-python3.11}"
STAMP="$VENV/.sluice-install.stamp"

step_apt() {
  local missing=() p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    log "apt: ok (${APT_PACKAGES[*]})"
    return 0
  fi
  local sudo=()
  ((EUID == 0)) || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq >"$LOG_DIR/apt.log" 2>&1 ||
    { tail -n 20 "$LOG_DIR/apt.log" >&2; die "apt-get update failed"; }
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq \
    --no-install-recommends "${missing[@]}" >>"$LOG_DIR/apt.log" 2>&1 ||
    { tail -n 20 "$LOG_DIR/apt.log" >&2; die "apt-get install failed (log: $LOG_DIR/apt.log)"; }
  log "apt: installed ${missing[*]}"
}

step_venv() {
  if [[ ! -x $VENV/bin/python ]]; then
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
    "$PYTHON" -m venv "$VENV"
    log "venv: created $VENV"
  fi
  if [[ -f $STAMP && $STAMP -nt pyproject.toml && $STAMP -nt constraints.txt ]]; then
    log "python deps: ok"
    return 0
  fi
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    -c constraints.txt -e '.[dev]' >"$LOG_DIR/pip.log" 2>&1 ||
    { tail -n 30 "$LOG_DIR/pip.log" >&2; die "pip install failed (log: $LOG_DIR/pip.log)"; }
  touch "$STAMP"
  log "python deps: installed into $VENV"
}

step_kafka_jars() {
  resolve_kafka_jars
  log "kafka jars: ok ($(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars in $KAFKA_LIBS)"
}

# tus-js-client for the integration tests (a real browser-family tus client,
# run under Node.js), pinned by ops/clients/tus-js/package-lock.json.
step_node_clients() {
  local dir=ops/clients/tus-js stamp=ops/clients/tus-js/node_modules/.sluice.stamp
  if ! command -v npm >/dev/null; then
    local sudo=()
    ((EUID == 0)) || sudo=(sudo)
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq \
      --no-install-recommends nodejs npm >>"$LOG_DIR/apt.log" 2>&1 ||
      die "apt-get install nodejs npm failed (log: $LOG_DIR/apt.log)"
  fi
  if [[ -f $stamp && $stamp -nt $dir/package-lock.json ]]; then
    log "node clients: ok"
    return 0
  fi
  npm ci --prefix "$dir" --no-audit --no-fund >"$LOG_DIR/npm.log" 2>&1 ||
    { tail -n 30 "$LOG_DIR/npm.log" >&2; die "npm ci failed (log: $LOG_DIR/npm.log)"; }
  touch "$stamp"
  log "node clients: installed into $dir/node_modules"
}

step_apt
step_venv
step_kafka_jars
step_node_clients
