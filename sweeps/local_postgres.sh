#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback, for the sweep-storage tests and local use:
#   sweeps/local_postgres.sh start|stop|status
# Installs Debian's postgresql if missing (root), creates a cluster under $SCALING_PG_DIR
# (default /tmp/scaling-pg) owned by the postgres user, listens on 127.0.0.1:$SCALING_PG_PORT
# (default 55432) with trust authentication for loopback only, and creates the database `scaling`.
# `start` prints the storage URL: postgresql://postgres@127.0.0.1:55432/scaling
# When the two-node test cluster's bridge is up (`slurm/local_cluster.sh start --nodes 2`: scl-br,
# 10.231.7.254), it also listens on that address and trusts that /24 (the cluster's own network
# namespaces, which cannot reach this loopback): trials on those nodes use
# postgresql://postgres@10.231.7.254:55432/scaling.
set -euo pipefail
DIR=${SCALING_PG_DIR:-/tmp/scaling-pg}
PORT=${SCALING_PG_PORT:-55432}
URL="postgresql://postgres@127.0.0.1:$PORT/scaling"
BRIDGE=scl-br BRIDGE_ADDR=10.231.7.254 BRIDGE_NET=10.231.7.0/24  # the two-node cluster's (slurm/local_cluster.sh)

bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

install() {
  if [ -z "$(bindir)" ]; then
    echo "installing postgresql" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
}

as_pg() { runuser -u postgres -- "$@"; }

running() { [ -n "$(bindir)" ] && [ -f "$DIR/data/postmaster.pid" ] && as_pg "$(bindir)/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; }

start() {
  install
  local bin; bin=$(bindir)
  mkdir -p "$DIR"
  chown postgres:postgres "$DIR"
  if [ ! -f "$DIR/data/PG_VERSION" ]; then
    as_pg "$bin/initdb" -D "$DIR/data" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  local listen=127.0.0.1
  if ip -4 addr show dev "$BRIDGE" 2>/dev/null | grep -q "inet $BRIDGE_ADDR/"; then
    listen="$listen,$BRIDGE_ADDR"
    grep -q "^host all all $BRIDGE_NET trust" "$DIR/data/pg_hba.conf" ||
      echo "host all all $BRIDGE_NET trust" >> "$DIR/data/pg_hba.conf"
  fi
  if ! running; then
    as_pg "$bin/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w \
      -o "-p $PORT -k $DIR -c listen_addresses=$listen -c max_connections=200" start >/dev/null
  fi
  if ! as_pg psql -h 127.0.0.1 -p "$PORT" -tAc "SELECT 1 FROM pg_database WHERE datname='scaling'" | grep -q 1; then
    as_pg psql -h 127.0.0.1 -p "$PORT" -qc "CREATE DATABASE scaling" >/dev/null
  fi
  echo "$URL"
}

stop() {
  if running; then as_pg "$(bindir)/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null; fi
  rm -rf "$DIR"
}

status() {
  if running; then echo "$URL"; else echo "no local PostgreSQL server is running ($DIR)"; return 1; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
