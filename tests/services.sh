#!/usr/bin/env bash
# The real services some tests talk to: the local one-node SLURM cluster, the two-node one (each node
# in its own network namespace) and a throwaway PostgreSQL server.
#   tests/services.sh up    start each one that is not running (root only), remembering which
#   tests/services.sh down  stop the ones `up` started
# Without root they are left alone and the tests that need them skip (or fail, in CI).
set -uo pipefail
cd "$(dirname "$0")/.."
STARTED=${SCALING_SERVICES_STATE:-/tmp/scaling-services.started}
SERVICES=("slurm/local_cluster.sh" "slurm/local_cluster.sh --nodes 2" "sweeps/local_postgres.sh")

case "${1:-}" in
  up)
    : > "$STARTED"
    for svc in "${SERVICES[@]}"; do
      read -r script args <<< "$svc"
      # shellcheck disable=SC2086  # $args: the service's own options, word by word
      if bash "$script" status $args >/dev/null 2>&1; then continue; fi
      if [ "$(id -u)" != 0 ]; then
        echo "tests/services.sh: not root, so $svc is not started; the tests that need it skip" >&2
        continue
      fi
      # shellcheck disable=SC2086
      if bash "$script" start $args >/dev/null; then echo "$svc" >> "$STARTED"; else echo "tests/services.sh: $svc did not start" >&2; fi
    done ;;
  down)
    if [ -f "$STARTED" ]; then
      # shellcheck disable=SC2086
      while read -r script args; do [ -n "$script" ] && bash "$script" stop $args; done < "$STARTED"
      rm -f "$STARTED"
    fi ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
