#!/usr/bin/env bash
# Local single-node Kafka (KRaft) from Maven-resolved jars on the machine's Java.
#   ops/scripts/kafka.sh start|stop|status
# Env: SLUICE_HOME (.sluice), SLUICE_KAFKA_HOST / SLUICE_KAFKA_PORT (from
#      SLUICE_KAFKA_BOOTSTRAP, else 127.0.0.1:9092), SLUICE_KAFKA_CONTROLLER_PORT (9093),
#      SLUICE_KAFKA_HEAP (512m).
set -euo pipefail
# shellcheck source=ops/scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NAME=kafka
PATTERN=kafka.Kafka
# Host and port default to those of SLUICE_KAFKA_BOOTSTRAP (what clients use).
BOOTSTRAP="${SLUICE_KAFKA_BOOTSTRAP:-127.0.0.1:9092}"
BOOTSTRAP="${BOOTSTRAP%%,*}"
HOST="${SLUICE_KAFKA_HOST:-$(hostof "$BOOTSTRAP")}"
PORT="${SLUICE_KAFKA_PORT:-$(portof "$BOOTSTRAP")}"
CONTROLLER_PORT="${SLUICE_KAFKA_CONTROLLER_PORT:-9093}"
HEAP="${SLUICE_KAFKA_HEAP:-512m}"
KAFKA_DIR="$SLUICE_HOME/kafka"
DATA_DIR="$KAFKA_DIR/data"
CONF="$KAFKA_DIR/server.properties"
LOG4J="$REPO_ROOT/ops/kafka/log4j2.yaml"
CLUSTER_ID_FILE="$KAFKA_DIR/cluster.id"

kafka_java() {
  java "-Dlog4j2.configurationFile=$LOG4J" -cp "$KAFKA_LIBS/*" "$@"
}

metadata_ok() {
  port_open "$HOST" "$PORT" || return 1
  if [[ -x $VENV/bin/python ]]; then
    "$VENV/bin/python" - "$HOST:$PORT" <<'PY' >/dev/null 2>&1
import sys
from confluent_kafka.admin import AdminClient
AdminClient({"bootstrap.servers": sys.argv[1]}).list_topics(timeout=3)
PY
  fi
}

start() {
  local pid
  if pid=$(pid_of "$NAME" "$PATTERN"); then
    log "kafka: already running (pid $pid, $HOST:$PORT)"
    return 0
  fi
  command -v java >/dev/null || die "java not found"
  port_open "$HOST" "$PORT" && die "kafka: port $PORT already in use by another process"
  resolve_kafka_jars
  mkdir -p "$DATA_DIR"
  render "$REPO_ROOT/ops/kafka/server.properties.in" "$CONF" \
    HOST="$HOST" PORT="$PORT" CONTROLLER_PORT="$CONTROLLER_PORT" DATA_DIR="$DATA_DIR"
  if [[ ! -f $DATA_DIR/meta.properties ]]; then
    if [[ ! -s $CLUSTER_ID_FILE ]]; then
      local id
      id=$(kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null |
        grep -E '^[A-Za-z0-9_-]{22}$' | tail -n1) || die "kafka: random-uuid failed"
      printf '%s\n' "$id" >"$CLUSTER_ID_FILE"
    fi
    kafka_java kafka.tools.StorageTool format -t "$(<"$CLUSTER_ID_FILE")" \
      -c "$CONF" --standalone >>"$LOG_DIR/kafka.log" 2>&1 ||
      die "kafka: storage format failed (log: $LOG_DIR/kafka.log)"
    log "kafka: formatted storage (cluster $(<"$CLUSTER_ID_FILE"))"
  fi
  start_bg "$NAME" "$PATTERN" java "-Xmx$HEAP" -Xms128m \
    "-Dlog4j2.configurationFile=$LOG4J" "-Dkafka.logs.dir=$LOG_DIR" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$CONF"
  # After a SIGKILL the broker's old registration lives on for
  # broker.session.timeout.ms (60 s) and the new one is refused until then.
  wait_until "$NAME" "$PATTERN" 120 metadata_ok
  log "kafka: ready on $HOST:$PORT (pid $(<"$RUN_DIR/$NAME.pid"), log $LOG_DIR/kafka.log)"
}

case "${1:-}" in
  start) start ;;
  stop) stop_bg "$NAME" "$PATTERN" 30 ;;
  status) status_bg "$NAME" "$PATTERN" "$HOST:$PORT" ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
