#!/usr/bin/env bash
# A real SLURM cluster on this machine, for tests and local use:
#   slurm/local_cluster.sh start|stop|status [--nodes N]
# Installs Debian's slurm-wlm and munge if missing, writes slurm.conf under $SCALING_SLURM_DIR,
# starts munged, slurmctld and slurmd, and waits for the nodes to be idle. Commands find the
# cluster through SLURM_CONF=$SCALING_SLURM_DIR/slurm.conf (printed by `start`).
#
# --nodes 1 (default; dir /tmp/scaling-slurm): one node, this machine, in its own network stack.
# --nodes N>1 (dir /tmp/scaling-slurm-Nnodes): N nodes, each slurmd in its own network and UTS
#   namespace (hostname scl-nI, address 10.231.7.(10+I)); slurmctld in a third (scl-ctl,
#   10.231.7.1). Each namespace has one veth link to a bridge (scl-br, 10.231.7.254) that this
#   script creates, and no default route: traffic stays between the addresses it made. Names
#   resolve through /etc/netns/<ns>/hosts, which `ip netns exec` mounts over /etc/hosts there.
#   munged is shared: its socket is a file, which every namespace sees. `stop --nodes N` removes
#   every namespace, link, hosts file and daemon it created.
set -euo pipefail
ACTION=${1:-}
NODES=1
if [ "${2:-}" = "--nodes" ]; then NODES=${3:?--nodes needs a number}; fi
case "$NODES" in ''|*[!0-9]*|0) echo "--nodes: got '$NODES'; expected a whole number, at least 1" >&2; exit 2 ;; esac
if [ "$NODES" -gt 8 ]; then echo "--nodes: got $NODES; at most 8" >&2; exit 2; fi
if [ "$NODES" = 1 ]; then DIR=${SCALING_SLURM_DIR:-/tmp/scaling-slurm}; else DIR=${SCALING_SLURM_DIR:-/tmp/scaling-slurm-${NODES}nodes}; fi
CONF=$DIR/slurm.conf
export SLURM_CONF=$CONF
NET=10.231.7          # the /24 of the multi-node cluster's namespaces
BRIDGE=scl-br
CTL=scl-ctl

install() {
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    echo "installing slurm-wlm and munge" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
  fi
  if [ "$NODES" -gt 1 ] && ! command -v ip >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null
  fi
}

# The settings both layouts share: conf_head CLUSTER_NAME CONTROLLER PER_NODE, where PER_NODE is ""
# for one slurmd or "-%n" for several (each slurmd's own pid file, log and spool directory).
conf_head() {
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
  local spool=$DIR/spool
  [ -n "$3" ] && spool=$DIR/spool/%n
  cat > "$CONF" <<CONF
ClusterName=$1
SlurmctldHost=$2
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
SlurmdSpoolDir=$spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd$3.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd$3.log
CONF
}

write_conf() {
  local host mem
  host=$(hostname -s)
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  conf_head scaling-local "$host" ""
  echo "NodeName=$host CPUs=$(nproc) RealMemory=$mem State=UNKNOWN" >> "$CONF"
  echo "PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP" >> "$CONF"
}

# ----------------------------------------------------------------------------- several nodes
node() { echo "scl-n$1"; }

write_multi_conf() {
  local mem i
  mem=$(awk -v n="$NODES" '/MemTotal/ {print int($2 / 1024 * 0.9 / n)}' /proc/meminfo)
  conf_head "scaling-${NODES}nodes" "$CTL($NET.1)" "-%n"
  for i in $(seq 1 "$NODES"); do
    echo "NodeName=$(node "$i") NodeAddr=$NET.$((10 + i)) CPUs=$(nproc) RealMemory=$mem State=UNKNOWN" >> "$CONF"
  done
  echo "PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP" >> "$CONF"
}

namespaces() { echo "$CTL"; for i in $(seq 1 "$NODES"); do node "$i"; done; }
address() { if [ "$1" = "$CTL" ]; then echo "$NET.1"; else echo "$NET.$((10 + ${1#scl-n}))"; fi; }

check_subnet() {
  # Refuse rather than shadow a network this machine already uses.
  if ip -4 route show | grep -v "dev $BRIDGE" | grep -q "^$NET\."; then
    echo "$NET.0/24 is already routed on this machine; the multi-node cluster needs it for itself" >&2
    ip -4 route show >&2
    return 1
  fi
}

make_network() {
  check_subnet
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  ip addr replace "$NET.254/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  local ns hosts
  hosts=$(printf '127.0.0.1 localhost\n'; for ns in $(namespaces); do printf '%s %s\n' "$(address "$ns")" "$ns"; done)
  for ns in $(namespaces); do
    if ! ip netns list | grep -qw "$ns"; then
      ip netns add "$ns"
      ip link add "v-$ns" type veth peer name eth0 netns "$ns"
      ip link set "v-$ns" master "$BRIDGE" up
      ip -n "$ns" addr add "$(address "$ns")/24" dev eth0
      ip -n "$ns" link set eth0 up
      ip -n "$ns" link set lo up
    fi
    mkdir -p "/etc/netns/$ns"
    echo "$hosts" > "/etc/netns/$ns/hosts"
    echo "$ns" > "/etc/netns/$ns/hostname"
  done
}

# Run a command in namespace $1's network, with its own hostname (a new UTS namespace) and its
# hosts file bound over /etc/hosts in a private mount namespace. Unlike `ip netns exec`, this
# leaves /sys (and the cgroup mounts slurmd needs) as they are on the machine.
in_host() {
  local ns=$1; shift
  nsenter --net="/run/netns/$ns" unshare --uts --mount --propagation private -- \
    sh -c "hostname $ns && mount --bind /etc/netns/$ns/hosts /etc/hosts && exec \"\$@\"" sh "$@"
}

start_multi() {
  install
  write_multi_conf
  make_network
  start_munge
  running "$DIR/slurmctld.pid" || in_host "$CTL" slurmctld -f "$CONF"
  local i
  for i in $(seq 1 "$NODES"); do
    mkdir -p "$DIR/spool/$(node "$i")"
    running "$DIR/slurmd-$(node "$i").pid" || in_host "$(node "$i")" slurmd -f "$CONF" -N "$(node "$i")"
  done
  wait_idle "$DIR/slurmctld.pid" $(for i in $(seq 1 "$NODES"); do echo "$DIR/slurmd-$(node "$i").pid"; done)
}

stop_multi() {
  local ns pid
  for ns in $(namespaces); do
    if ip netns list | grep -qw "$ns"; then
      for pid in $(ip netns pids "$ns"); do kill "$pid" 2>/dev/null || true; done
    fi
  done
  for _ in $(seq 1 40); do
    local left=""
    for ns in $(namespaces); do ip netns list | grep -qw "$ns" && left="$left$(ip netns pids "$ns")"; done
    [ -z "$left" ] && break
    sleep 0.5
  done
  for ns in $(namespaces); do
    if ip netns list | grep -qw "$ns"; then
      for pid in $(ip netns pids "$ns"); do kill -9 "$pid" 2>/dev/null || true; done
      ip netns del "$ns"
    fi
    ip link del "v-$ns" 2>/dev/null || true
    rm -rf "/etc/netns/$ns"
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  rmdir /etc/netns 2>/dev/null || true
  rm -rf "$DIR/state" "$DIR/spool"
}

# ----------------------------------------------------------------------------- one node
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  install
  write_conf
  start_munge
  running "$DIR/slurmctld.pid" || slurmctld -f "$CONF"
  running "$DIR/slurmd.pid" || slurmd -f "$CONF"
  wait_idle "$DIR/slurmctld.pid" "$DIR/slurmd.pid"
}

start_munge() {
  mkdir -p /run/munge && chown munge:munge /run/munge
  if ! pgrep -x munged >/dev/null; then
    runuser -u munge -- /usr/sbin/munged
  fi
}

# Wait until every node of the cluster is idle (or in use); fail early if one of the daemons whose
# pid files are given has died.
wait_idle() {
  for _ in $(seq 1 60); do
    local states pidfile
    for pidfile in "$@"; do
      if [ -f "$pidfile" ] && ! running "$pidfile"; then
        echo "a SLURM daemon died ($pidfile); see $DIR/log/" >&2
        tail -n 20 "$DIR"/log/*.log >&2 || true
        return 1
      fi
    done
    states=$(sinfo -h -N -o '%t' 2>/dev/null || true)
    if [ "$(echo "$states" | grep -cE '^(idle|mix|alloc)')" -ge "$NODES" ]; then
      echo "SLURM_CONF=$CONF"
      return 0
    fi
    for n in $(sinfo -h -N -o '%N %t' 2>/dev/null | awk '$2 !~ /^(idle|mix|alloc)/ {print $1}'); do
      scontrol update nodename="$n" state=resume >/dev/null 2>&1 || true
    done
    sleep 1
  done
  echo "the local SLURM nodes did not become idle; see $DIR/log/" >&2
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

case "$ACTION" in
  start) if [ "$NODES" = 1 ]; then start; else start_multi; fi ;;
  stop) if [ "$NODES" = 1 ]; then stop; else stop_multi; fi ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status [--nodes N]" >&2; exit 2 ;;
esac
