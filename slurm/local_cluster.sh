#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for tests and local use:
#   slurm/local_cluster.sh start|stop|status
# Installs Debian's slurm-wlm and munge if missing, writes slurm.conf under $SCALING_SLURM_DIR
# (default /tmp/scaling-slurm), starts munged, slurmctld and slurmd, and waits for the node to be idle.
# Commands find the cluster through SLURM_CONF=$SCALING_SLURM_DIR/slurm.conf (printed by `start`).
set -euo pipefail
DIR=${SCALING_SLURM_DIR:-/tmp/scaling-slurm}
CONF=$DIR/slurm.conf
export SLURM_CONF=$CONF

install() {
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    echo "installing slurm-wlm and munge" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
  fi
}

write_conf() {
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
  local host mem
  host=$(hostname -s)
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  cat > "$CONF" <<CONF
ClusterName=scaling-local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
InactiveLimit=0
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
NodeName=$host CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  install
  write_conf
  mkdir -p /run/munge && chown munge:munge /run/munge
  if ! pgrep -x munged >/dev/null; then
    runuser -u munge -- /usr/sbin/munged
  fi
  running "$DIR/slurmctld.pid" || slurmctld -f "$CONF"
  running "$DIR/slurmd.pid" || slurmd -f "$CONF"
  for _ in $(seq 1 60); do
    if sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
      echo "SLURM_CONF=$CONF"
      return 0
    fi
    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  echo "the local SLURM node did not become idle; see $DIR/log/" >&2
  sinfo >&2 || true
  return 1
}

stop() {
  for daemon in slurmd slurmctld; do
    if running "$DIR/$daemon.pid"; then kill "$(cat "$DIR/$daemon.pid")" || true; fi
  done
  for _ in $(seq 1 20); do
    running "$DIR/slurmd.pid" || running "$DIR/slurmctld.pid" || break
    sleep 0.5
  done
  # Clear saved state so the next start has no jobs left over from this one.
  rm -rf "$DIR/state" "$DIR/spool"
}

status() {
  if sinfo >/dev/null 2>&1; then sinfo; squeue; else echo "no local SLURM cluster is running ($CONF)"; return 1; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
