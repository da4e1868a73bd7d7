# shellcheck shell=bash
# Shared helpers for the local-stack scripts. Source it, do not run it.
#
# Every script cds to the repository root and exports an absolute SLUICE_HOME,
# so child processes (which resolve SLUICE_HOME relative to their working
# directory) agree on one state root whichever directory the operator ran from.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO_ROOT" || exit 1

SLUICE_HOME="${SLUICE_HOME:-.sluice}"
mkdir -p "$SLUICE_HOME"
SLUICE_HOME="$(cd "$SLUICE_HOME" && pwd)"
export SLUICE_HOME

RUN_DIR="$SLUICE_HOME/run"
LOG_DIR="$SLUICE_HOME/logs"
mkdir -p "$RUN_DIR" "$LOG_DIR"

# shellcheck disable=SC2034  # used by the sourcing scripts
VENV="${SLUICE_VENV:-$REPO_ROOT/.venv}"
KAFKA_LIBS="$SLUICE_HOME/kafka/libs"
KAFKA_POM="$REPO_ROOT/ops/kafka/pom.xml"

log() { printf '%s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# host / port of a "host:port" string
hostof() { printf '%s' "${1%:*}"; }
portof() { printf '%s' "${1##*:}"; }

# port_open HOST PORT -> 0 when a TCP connect succeeds
port_open() {
  python3 - "$1" "$2" <<'EOF' 2>/dev/null
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
except OSError:
    sys.exit(1)
EOF
}

# http_ok URL -> 0 when GET answers 200
http_ok() {
  python3 - "$1" <<'EOF' 2>/dev/null
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
EOF
}

# pid_of NAME PATTERN -> prints the pid and returns 0 when the pid file names a
# live process whose command line contains PATTERN (guards against stale pid
# files whose pid was reused by an unrelated process).
pid_of() {
  local name=$1 pattern=$2 pidfile="$RUN_DIR/$1.pid" pid cmd
  [[ -s $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmd == *"$pattern"* ]] || return 1
  printf '%s' "$pid"
}

# start_bg NAME PATTERN CMD... -> starts CMD detached (own session, nohup),
# stdout+stderr appended to $LOG_DIR/NAME.log, pid in $RUN_DIR/NAME.pid.
# The pid is written by the process itself before exec, so it is exact.
start_bg() {
  local name=$1 pattern=$2; shift 2
  local pidfile="$RUN_DIR/$name.pid" logfile="$LOG_DIR/$name.log" i
  rm -f "$pidfile"
  printf '\n==== %s starting %s ====\n' "$(date -Is)" "$name" >>"$logfile"
  # shellcheck disable=SC2016  # $$ and $@ belong to the inner sh
  setsid nohup sh -c 'echo $$ > "$0"; exec "$@"' "$pidfile" "$@" \
    >>"$logfile" 2>&1 </dev/null &
  for ((i = 0; i < 50; i++)); do
    [[ -s $pidfile ]] && return 0
    sleep 0.1
  done
  die "$name: no pid file after start (see $logfile)"
}

# stop_bg NAME PATTERN [TIMEOUT_S] -> SIGTERM, wait, then SIGKILL. Signals the
# whole process group when the process leads one (start_bg makes it so).
stop_bg() {
  local name=$1 pattern=$2 timeout=${3:-30} pidfile="$RUN_DIR/$1.pid" pid target i
  if ! pid=$(pid_of "$name" "$pattern"); then
    rm -f "$pidfile"
    log "$name: not running"
    return 0
  fi
  target=$pid
  [[ $(ps -o pgid= -p "$pid" | tr -d ' ') == "$pid" ]] && target="-$pid"
  kill -TERM -- "$target" 2>/dev/null || true
  for ((i = 0; i < timeout * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name: still alive after ${timeout}s, sending SIGKILL"
    kill -KILL -- "$target" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  rm -f "$pidfile"
  log "$name: stopped (pid $pid)"
}

# status_bg NAME PATTERN [DETAIL] -> one line; returns 0 running, 3 stopped
status_bg() {
  local name=$1 pattern=$2 detail=${3:-} pid
  if pid=$(pid_of "$name" "$pattern"); then
    printf '%-10s running  pid %-7s %s\n' "$name" "$pid" "$detail"
    return 0
  fi
  printf '%-10s stopped\n' "$name"
  return 3
}

# wait_until NAME PATTERN TIMEOUT_S CHECK... -> polls CHECK until it succeeds;
# fails early when the process died, and shows the log tail on failure.
wait_until() {
  local name=$1 pattern=$2 timeout=$3; shift 3
  local deadline=$((SECONDS + timeout))
  while ((SECONDS < deadline)); do
    if ! pid_of "$name" "$pattern" >/dev/null; then
      tail -n 30 "$LOG_DIR/$name.log" >&2 || true
      die "$name: process exited during startup (log: $LOG_DIR/$name.log)"
    fi
    "$@" && return 0
    sleep 0.5
  done
  tail -n 30 "$LOG_DIR/$name.log" >&2 || true
  die "$name: not ready after ${timeout}s (log: $LOG_DIR/$name.log)"
}

# resolve_kafka_jars -> Kafka's runtime jars in $KAFKA_LIBS, resolved by Maven,
# skipped when the stamp matches the pom's sha256.
resolve_kafka_jars() {
  local sum stamp="$KAFKA_LIBS/.pom.sha256" tmp
  sum=$(sha256sum "$KAFKA_POM" | cut -d' ' -f1)
  if [[ -f $stamp && $(<"$stamp") == "$sum" ]]; then
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
  tmp="$KAFKA_LIBS.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  mvn -q -B -f "$KAFKA_POM" dependency:copy-dependencies \
    -DoutputDirectory="$tmp" -DincludeScope=runtime >"$LOG_DIR/maven.log" 2>&1 ||
    { tail -n 30 "$LOG_DIR/maven.log" >&2; rm -rf "$tmp"; die "maven failed (log: $LOG_DIR/maven.log)"; }
  printf '%s\n' "$sum" >"$tmp/.pom.sha256"
  rm -rf "$KAFKA_LIBS"
  mv "$tmp" "$KAFKA_LIBS"
}

# render TEMPLATE OUT KEY=VALUE... -> replaces @KEY@ with VALUE
render() {
  local template=$1 out=$2; shift 2
  python3 - "$template" "$out" "$@" <<'EOF'
import sys
text = open(sys.argv[1]).read()
for kv in sys.argv[3:]:
    k, v = kv.split("=", 1)
    text = text.replace(f"@{k}@", v)
import re
left = re.findall(r"@[A-Z_]+@", text)
if left:
    sys.exit(f"unreplaced placeholders in {sys.argv[1]}: {left}")
tmp = sys.argv[2] + ".tmp"
open(tmp, "w").write(text)
import os; os.replace(tmp, sys.argv[2])
EOF
}
