# The distributed services on 127.0.0.1, sourced by scripts/services (`up|down|status
# --cluster`): a Redis Cluster of three primaries and three replicas (Debian's
# redis-server in cluster mode, AOF on, created with `redis-cli --cluster create`) and a
# Kafka cluster of three KRaft nodes (each broker and controller), replication factor 3
# and min.insync.replicas 2 for every topic. Data under .local/data/cluster, pid files
# under .local/run/cluster-*; `down --cluster` stops only what these started.
#
# Ports: Redis LOYALTY_CLUSTER_REDIS_PORT (7101) .. +5; Kafka brokers
# LOYALTY_CLUSTER_KAFKA_PORT (19092) .. +2, their controllers +100.

CLUSTER_DATA="$DATA/cluster"
CLUSTER_REDIS_PORT="${LOYALTY_CLUSTER_REDIS_PORT:-7101}"
CLUSTER_KAFKA_PORT="${LOYALTY_CLUSTER_KAFKA_PORT:-19092}"

cluster_redis_ports() { for i in 0 1 2 3 4 5; do echo $((CLUSTER_REDIS_PORT + i)); done; }
cluster_kafka_nodes() { echo 1 2 3; }
cluster_kafka_port() { echo $((CLUSTER_KAFKA_PORT + $1 - 1)); }
cluster_controller_port() { echo $((CLUSTER_KAFKA_PORT + 100 + $1 - 1)); }

cluster_redis_up() {
  ensure_redis_installed
  local port
  for port in $(cluster_redis_ports); do
    local pidfile="$RUN/cluster-redis-$port.pid"
    if alive "$pidfile"; then continue; fi
    if port_open "$port"; then log "port $port is taken (not a node started here)"; exit 1; fi
    mkdir -p "$CLUSTER_DATA/redis-$port"
    redis-server --bind 127.0.0.1 --port "$port" --dir "$CLUSTER_DATA/redis-$port" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 3000 \
      --appendonly yes --appendfsync everysec --save "" --protected-mode yes \
      --auto-aof-rewrite-percentage "$REDIS_AOF_REWRITE_PCT" \
      --daemonize yes --pidfile "$pidfile" --logfile "$LOGS/cluster-redis-$port.log"
  done
  for port in $(cluster_redis_ports); do
    wait_for "redis node $port" 30 redis_answers "$port"
  done
  if [[ "$(redis-cli -p "$CLUSTER_REDIS_PORT" cluster info | tr -d '\r' | sed -n 's/^cluster_state://p')" != ok ]]; then
    if [[ "$(redis-cli -p "$CLUSTER_REDIS_PORT" cluster info | tr -d '\r' | sed -n 's/^cluster_known_nodes://p')" == 1 ]]; then
      log "creating the Redis Cluster (3 primaries, 3 replicas) on ports $(cluster_redis_ports | tr '\n' ' ')"
      # shellcheck disable=SC2046
      redis-cli --cluster create $(cluster_redis_ports | sed 's/^/127.0.0.1:/') --cluster-replicas 1 \
        --cluster-yes >"$LOGS/cluster-redis-create.log" 2>&1 \
        || { log "cluster create failed, see $LOGS/cluster-redis-create.log"; exit 1; }
    fi
    wait_for "the Redis Cluster" 60 redis_cluster_ok
  fi
  log "redis cluster ready: $(redis-cli -p "$CLUSTER_REDIS_PORT" cluster info | tr -d '\r' | grep -E '^cluster_(state|size|known_nodes)' | tr '\n' ' ')"
}

redis_answers() { [[ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" == PONG ]]; }
redis_cluster_ok() {
  [[ "$(redis-cli -p "$CLUSTER_REDIS_PORT" cluster info | tr -d '\r' | sed -n 's/^cluster_state://p')" == ok ]]
}

cluster_kafka_config() { # node -> path of its server.properties
  local n="$1" dir="$LOCAL/kafka/cluster-$1"
  mkdir -p "$dir"
  local voters="" m
  for m in $(cluster_kafka_nodes); do voters+="${voters:+,}$m@127.0.0.1:$(cluster_controller_port "$m")"; done
  cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$(cluster_kafka_port "$n"),CONTROLLER://127.0.0.1:$(cluster_controller_port "$n")
advertised.listeners=PLAINTEXT://127.0.0.1:$(cluster_kafka_port "$n")
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$CLUSTER_DATA/kafka-$n
num.partitions=4
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
unclean.leader.election.enable=false
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=168
log.segment.bytes=268435456
EOF
  sed "s:$LOGS/kafka.log:$LOGS/cluster-kafka-$n.log:" "$LOCAL/kafka/log4j.properties" >"$dir/log4j.properties"
  echo "$dir/server.properties"
}

cluster_kafka_up() {
  ensure_kafka_installed
  kafka_config >/dev/null # the single node's log4j file, which each node's copies
  local cp="$KAFKA_LIBS/*" id_file="$CLUSTER_DATA/kafka-cluster-id" n
  mkdir -p "$CLUSTER_DATA"
  [[ -f "$id_file" ]] || java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null >"$id_file"
  local started=()
  for n in $(cluster_kafka_nodes); do
    local pidfile="$RUN/cluster-kafka-$n.pid"
    if alive "$pidfile"; then continue; fi
    if port_open "$(cluster_kafka_port "$n")"; then log "port $(cluster_kafka_port "$n") is taken"; exit 1; fi
    local cfg; cfg="$(cluster_kafka_config "$n")"
    local java_opts=(-Xms256m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true
      "-Dlog4j.configuration=file:$(dirname "$cfg")/log4j.properties")
    if [[ ! -f "$CLUSTER_DATA/kafka-$n/meta.properties" ]]; then
      java "${java_opts[@]}" -cp "$cp" kafka.tools.StorageTool format -t "$(cat "$id_file")" -c "$cfg" \
        >"$LOGS/cluster-kafka-$n-format.log" 2>&1 || { log "format of node $n failed"; exit 1; }
    fi
    log "starting kafka node $n on 127.0.0.1:$(cluster_kafka_port "$n")"
    date '+%Y-%m-%d %H:%M:%S' >"$RUN/cluster-kafka-$n.started"
    nohup java "${java_opts[@]}" -cp "$cp" kafka.Kafka "$cfg" >"$LOGS/cluster-kafka-$n.out" 2>&1 &
    echo $! >"$pidfile"
    started+=("$n")
  done
  for n in "${started[@]}"; do wait_for "kafka node $n" 300 cluster_kafka_ready "$n"; done
  log "kafka cluster ready: brokers $(cluster_bootstrap)"
}

cluster_kafka_ready() {
  local n="$1"
  alive "$RUN/cluster-kafka-$n.pid" || { log "kafka node $n exited, see $LOGS/cluster-kafka-$n.out"; exit 1; }
  port_open "$(cluster_kafka_port "$n")" && grep -h "Kafka Server started" "$LOGS"/cluster-kafka-"$n".log* 2>/dev/null \
    | awk -v t="$(cat "$RUN/cluster-kafka-$n.started")" '{ if (substr($0, 2, 19) >= t) found = 1 } END { exit !found }'
}

cluster_up() { cluster_redis_up; cluster_kafka_up; cluster_env; }

cluster_bootstrap() {
  local n out=""
  for n in $(cluster_kafka_nodes); do out+="${out:+,}127.0.0.1:$(cluster_kafka_port "$n")"; done
  echo "$out"
}

cluster_env() {
  echo "redis cluster: 127.0.0.1:$CLUSTER_REDIS_PORT..$((CLUSTER_REDIS_PORT + 5)) (3 primaries, 3 replicas)"
  echo "kafka bootstrap: $(cluster_bootstrap) (replication factor 3, min.insync.replicas 2)"
}

cluster_down() {
  local n port
  for n in $(cluster_kafka_nodes); do stop "kafka node $n" "$RUN/cluster-kafka-$n.pid"; done
  for port in $(cluster_redis_ports); do stop "redis node $port" "$RUN/cluster-redis-$port.pid"; done
}

cluster_node() { # up|down redis PORT | kafka N: one node (the fault tests kill and restart them)
  local what="$1" kind="$2" id="$3"
  case "$what:$kind" in
    down:redis) stop "redis node $id" "$RUN/cluster-redis-$id.pid" ;;
    down:kafka) stop "kafka node $id" "$RUN/cluster-kafka-$id.pid" ;;
    up:redis) cluster_redis_up ;;
    up:kafka) cluster_kafka_up ;;
  esac
}

cluster_status() {
  local rc=0 n port
  for port in $(cluster_redis_ports); do
    if alive "$RUN/cluster-redis-$port.pid"; then
      echo "redis node $port  running  $(redis-cli -p "$port" role 2>/dev/null | head -1)"
    else echo "redis node $port  stopped"; rc=3; fi
  done
  for n in $(cluster_kafka_nodes); do
    if alive "$RUN/cluster-kafka-$n.pid"; then echo "kafka node $n  running  127.0.0.1:$(cluster_kafka_port "$n")"
    else echo "kafka node $n  stopped"; rc=3; fi
  done
  return $rc
}
