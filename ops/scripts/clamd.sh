#!/usr/bin/env bash
# Local clamd (Debian clamav-daemon) with the project's test signatures.
#   ops/scripts/clamd.sh start|stop|status
# Env: SLUICE_HOME (.sluice), SLUICE_CLAMD_HOST (127.0.0.1), SLUICE_CLAMD_PORT (3310),
#      SLUICE_CLAMD_CACHE (on; off disables clamd's clean-file cache).
set -euo pipefail
# shellcheck source=ops/scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NAME=clamd
PATTERN=clamd
HOST="${SLUICE_CLAMD_HOST:-127.0.0.1}"
PORT="${SLUICE_CLAMD_PORT:-3310}"
CLAM_DIR="$SLUICE_HOME/clamav"
DB_DIR="$CLAM_DIR/db"
CONF="$CLAM_DIR/clamd.conf"
CLAMD_BIN="${CLAMD_BIN:-$(command -v clamd || echo /usr/sbin/clamd)}"

# clamd is ready once it answers PING with PONG (signatures loaded).
pong() {
  python3 - "$HOST" "$PORT" <<'PY' 2>/dev/null
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2) as s:
    s.sendall(b"zPING\0")
    sys.exit(0 if s.recv(64).rstrip(b"\0\n") == b"PONG" else 1)
PY
}

start() {
  local pid
  if pid=$(pid_of "$NAME" "$PATTERN"); then
    log "clamd: already running (pid $pid, $HOST:$PORT)"
    return 0
  fi
  [[ -x $CLAMD_BIN ]] || die "clamd not found (run ops/scripts/bootstrap.sh)"
  port_open "$HOST" "$PORT" && die "clamd: port $PORT already in use by another process"
  mkdir -p "$DB_DIR" "$CLAM_DIR/tmp"
  # The database directory holds exactly the project's signatures.
  find "$DB_DIR" -mindepth 1 -delete
  cp "$REPO_ROOT"/ops/clamav/signatures/* "$DB_DIR/"
  render "$REPO_ROOT/ops/clamav/clamd.conf.in" "$CONF" \
    DB_DIR="$DB_DIR" TMP_DIR="$CLAM_DIR/tmp" HOST="$HOST" PORT="$PORT" \
    LOG_FILE="$LOG_DIR/clamd.log" \
    DISABLE_CACHE="$([[ ${SLUICE_CLAMD_CACHE:-on} == off ]] && echo yes || echo no)"
  start_bg "$NAME" "$PATTERN" "$CLAMD_BIN" --config-file="$CONF"
  wait_until "$NAME" "$PATTERN" 60 pong
  log "clamd: ready on $HOST:$PORT (pid $(<"$RUN_DIR/$NAME.pid"), log $LOG_DIR/clamd.log)"
}

case "${1:-}" in
  start) start ;;
  stop) stop_bg "$NAME" "$PATTERN" 30 ;;
  status) status_bg "$NAME" "$PATTERN" "$HOST:$PORT" ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
