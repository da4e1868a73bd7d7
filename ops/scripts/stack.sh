#!/usr/bin/env bash
# The whole local Sluice stack, without Docker.
#   ops/scripts/stack.sh up|down|status [--infra-only]
#   ops/scripts/stack.sh down NAME...   stop only these components
# up:     Kafka and clamd, then (unless --infra-only) `sluice topics apply`
#         (as SLUICE_OPERATOR_TOKEN, or a development operator token) and the
#         warehouse, worker and gateway in the background.
#         Does not install anything: run ops/scripts/bootstrap.sh first
#         (`make` targets do).
# down:   apps first (gateway, worker, warehouse), then clamd, then Kafka.
# status: one line per component; exit 0 when all are running, 3 otherwise.
# Every step is idempotent. Pids: $SLUICE_HOME/run, logs: $SLUICE_HOME/logs.
set -euo pipefail
SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=ops/scripts/lib.sh
source "$SCRIPTS/lib.sh"

SLUICE="$VENV/bin/sluice"
APPS=(warehouse worker gateway)  # start order; stopped in reverse

listen_url() {  # "host:port" -> http://host:port, wildcard hosts probed on loopback
  local host port
  host=$(hostof "$1") port=$(portof "$1")
  [[ $host == 0.0.0.0 || $host == "" || $host == "[::]" ]] && host=127.0.0.1
  printf 'http://%s:%s' "$host" "$port"
}
WAREHOUSE_URL="$(listen_url "${SLUICE_WAREHOUSE_LISTEN:-127.0.0.1:8124}")"
GATEWAY_URL="$(listen_url "${SLUICE_GATEWAY_LISTEN:-127.0.0.1:8080}")"

app_pattern() { printf 'sluice %s' "$1"; }

app_cmd() {
  case $1 in
    warehouse) echo "$SLUICE warehouse serve" ;;
    worker) echo "$SLUICE worker" ;;
    gateway) echo "$SLUICE gateway" ;;
  esac
}

app_detail() {
  case $1 in
    warehouse) echo "$WAREHOUSE_URL" ;;
    gateway) echo "$GATEWAY_URL" ;;
    worker) echo "" ;;
  esac
}

# log_since NAME OFFSET STRING -> STRING appears in the log after byte OFFSET
log_since() { tail -c "+$(($2 + 1))" "$LOG_DIR/$1.log" 2>/dev/null | grep -qF "$3"; }

start_app() {
  local name=$1 pattern pid offset
  pattern=$(app_pattern "$name")
  if pid=$(pid_of "$name" "$pattern"); then
    log "$name: already running (pid $pid)"
    return 0
  fi
  offset=$(stat -c %s "$LOG_DIR/$name.log" 2>/dev/null || echo 0)
  # shellcheck disable=SC2046  # app_cmd is a fixed, space-free argument list
  start_bg "$name" "$pattern" $(app_cmd "$name")
  case $name in
    warehouse) wait_until "$name" "$pattern" 60 http_ok "$WAREHOUSE_URL/healthz" ;;
    gateway) wait_until "$name" "$pattern" 60 http_ok "$GATEWAY_URL/healthz" ;;
    worker) wait_until "$name" "$pattern" 60 log_since worker "$offset" "Worker ready" ;;
  esac
  log "$name: ready (pid $(<"$RUN_DIR/$name.pid")) $(app_detail "$name")"
}

up() {
  local infra_only=$1 name
  "$SCRIPTS/kafka.sh" start
  "$SCRIPTS/clamd.sh" start
  if ((infra_only)); then
    log "infra up. logs: $LOG_DIR/kafka.log, $LOG_DIR/clamd.log"
    return 0
  fi
  [[ -x $SLUICE ]] || die "$SLUICE not found: run ops/scripts/bootstrap.sh (or make bootstrap)"
  # `topics apply` needs an operator token: SLUICE_OPERATOR_TOKEN, or one the
  # development key pair issues (embedded mode).
  local token=${SLUICE_OPERATOR_TOKEN:-}
  if [[ -z $token ]]; then
    token=$("$SLUICE" token --tenant platform --role operator --subject stack.sh --ttl 300)
  fi
  SLUICE_TOKEN=$token "$SLUICE" topics apply >>"$LOG_DIR/topics.log" 2>&1 ||
    { tail -n 30 "$LOG_DIR/topics.log" >&2; die "sluice topics apply failed (log: $LOG_DIR/topics.log)"; }
  log "topics: applied"
  for name in "${APPS[@]}"; do
    start_app "$name"
  done
  log "stack up. logs:"
  for name in kafka clamd "${APPS[@]}"; do
    log "  $name: $LOG_DIR/$name.log"
  done
}

# wanted NAME -> 0 when NAME is among the components to stop (all by default)
wanted() {
  local name
  ((${#ONLY[@]} == 0)) && return 0
  for name in "${ONLY[@]}"; do [[ $name == "$1" ]] && return 0; done
  return 1
}

down() {
  local i
  for ((i = ${#APPS[@]} - 1; i >= 0; i--)); do
    wanted "${APPS[i]}" && stop_bg "${APPS[i]}" "$(app_pattern "${APPS[i]}")" 30
  done
  if wanted clamd; then "$SCRIPTS/clamd.sh" stop; fi
  if wanted kafka; then "$SCRIPTS/kafka.sh" stop; fi
}

status() {
  local infra_only=$1 rc=0 name
  "$SCRIPTS/kafka.sh" status || rc=3
  "$SCRIPTS/clamd.sh" status || rc=3
  if ((!infra_only)); then
    for name in "${APPS[@]}"; do
      status_bg "$name" "$(app_pattern "$name")" "$(app_detail "$name")" || rc=3
    done
  fi
  return "$rc"
}

cmd="${1:-}"
shift || true
infra_only=0
ONLY=()
for arg in "$@"; do
  case $arg in
    --infra-only) infra_only=1 ;;
    kafka | clamd | warehouse | worker | gateway) ONLY+=("$arg") ;;
    *) die "unknown option or component: $arg" ;;
  esac
done

case $cmd in
  up) up "$infra_only" ;;
  down) down ;;
  status) status "$infra_only" ;;
  *) echo "usage: $0 up|down|status [--infra-only]" >&2; exit 2 ;;
esac
