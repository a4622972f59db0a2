#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for trying and testing SLURM sweeps.
#   bash launchers/slurm_local.sh start    install (Debian packages) if needed, configure, start, wait until idle
#   bash launchers/slurm_local.sh status   daemons and `sinfo`; exit 0 when the node takes jobs
#   bash launchers/slurm_local.sh stop     stop slurmd, slurmctld and munged
# Needs root. Safe to run again: `start` on a running cluster with the same settings does nothing.
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
LOG_DIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
PARTITION=${SLURM_LOCAL_PARTITION:-debug}
HOST=$(hostname -s)

say() { echo "slurm_local: $*"; }
die() { echo "slurm_local: error: $*" >&2; exit 1; }

alive() {  # alive PIDFILE: the process named in PIDFILE is running
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

install_packages() {
    local need=()
    command -v slurmctld >/dev/null || need+=(slurmctld)
    command -v slurmd >/dev/null || need+=(slurmd)
    command -v sbatch >/dev/null || need+=(slurm-client)
    command -v munged >/dev/null || need+=(munge)
    ((${#need[@]})) || return 0
    [[ $(id -u) == 0 ]] || die "installing ${need[*]} needs root"
    say "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

write_conf() {  # the config for this host's real CPUs and memory, to stdout
    local node mem cpus
    # slurmd -C prints this host's NodeName line (CPUs, sockets, cores, threads, RealMemory) as slurmd sees it.
    node=$(slurmd -C | grep -m1 '^NodeName=') || die "slurmd -C printed no NodeName line"
    cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node")
    mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
    cat <<EOF
# Written by launchers/slurm_local.sh: a single-node cluster on $HOST.
ClusterName=tornado
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$((mem / cpus))
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
KillWait=5
InactiveLimit=0
MinJobAge=600
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    if alive $MUNGE_PID; then return 0; fi
    mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
    chmod 0700 /etc/munge /var/lib/munge /var/log/munge
    chmod 0755 /run/munge
    chmod 0400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged --pid-file=$MUNGE_PID
    munge -n | unmunge >/dev/null || die "munge does not work (see /var/log/munge/munged.log)"
}

node_state() { sinfo -h -N -n "$HOST" -o %T 2>/dev/null | head -1 | tr -d '*~#'; }

wait_idle() {
    local state="" i
    for i in $(seq 1 60); do
        state=$(node_state || true)
        case $state in
            idle|mixed|allocated|completing) say "node $HOST is $state (partition $PARTITION)"; return 0 ;;
            down|drained|draining|drain) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 1
    done
    tail -n 20 $LOG_DIR/slurmctld.log $LOG_DIR/slurmd.log >&2 || true
    die "node $HOST is not idle after 60 s (state: ${state:-none}); logs above"
}

start() {
    [[ $(id -u) == 0 ]] || die "start needs root"
    install_packages
    mkdir -p $CONF_DIR $STATE_DIR $SPOOL_DIR $LOG_DIR
    local new
    new=$(mktemp $CONF_DIR/.slurm.conf.XXXXXX)
    write_conf >"$new"
    if [[ -f $CONF ]] && cmp -s "$new" $CONF; then
        rm -f "$new"
    else
        chmod 0644 "$new"
        mv "$new" $CONF
        say "wrote $CONF"
        # A changed config needs fresh daemons.
        stop_slurm
    fi
    start_munge
    if ! alive $CTLD_PID; then slurmctld; fi
    if ! alive $SLURMD_PID; then slurmd; fi
    wait_idle
}

stop_pid() {  # stop_pid PIDFILE NAME
    alive "$1" || return 0
    local pid i
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || { rm -f "$1"; return 0; }; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$1"
}

stop_slurm() {
    stop_pid $SLURMD_PID slurmd
    stop_pid $CTLD_PID slurmctld
}

stop() {
    stop_slurm
    stop_pid $MUNGE_PID munged
    say "stopped"
}

status() {
    local ok=0
    for d in "munged:$MUNGE_PID" "slurmctld:$CTLD_PID" "slurmd:$SLURMD_PID"; do
        if alive "${d#*:}"; then echo "${d%%:*}: running (pid $(cat "${d#*:}"))"; else echo "${d%%:*}: stopped"; ok=1; fi
    done
    sinfo 2>/dev/null || { echo "sinfo: no answer from slurmctld"; ok=1; }
    case $(node_state || true) in idle|mixed|allocated|completing) ;; *) ok=1 ;; esac
    return $ok
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
