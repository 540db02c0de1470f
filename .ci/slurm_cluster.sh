#!/usr/bin/env bash
# A one-node SLURM cluster on localhost for evalkit's `slurm` tests (issue 13).
#
#   .ci/slurm_cluster.sh install        apt-get install what is missing (slurmctld slurmd slurm-client munge)
#   .ci/slurm_cluster.sh start DIR      start munged, slurmctld and slurmd with their own config in DIR
#                                       (slurm.conf, munge key and socket, state, logs, pid files); waits
#                                       until the node is idle; then `export SLURM_CONF=DIR/slurm.conf`
#   .ci/slurm_cluster.sh stop DIR       cancel the cluster's jobs, stop the daemons by the pids `start`
#                                       recorded in DIR/pids
#   .ci/slurm_cluster.sh run CMD...     install, start in a fresh temporary folder, run CMD with
#                                       SLURM_CONF set, stop and remove the folder (also when CMD fails
#                                       or is interrupted); exits with CMD's status
#
# Nothing outside DIR is written or started: munged runs with its own key and socket in DIR, the
# daemons listen on free ports picked at start, so a system SLURM or munge (if any) is left alone.
# Configuration: proctrack/linuxproc, task/none, select/cons_tres (CR_Core), one node with the
# machine's cores (nproc) and a conservative RealMemory, no accounting database, KillWait=2 (a
# cancelled job is SIGKILLed 2 s after its SIGTERM). Partitions: `debug` (the default) and
# `restricted`, which refuses every job at submission ("Invalid account or account/partition
# combination specified", as a real cluster refuses an unknown account). Root only.
set -euo pipefail

die() { echo "slurm_cluster: $*" >&2; exit 1; }

PACKAGES=(slurmctld slurmd slurm-client munge)

install() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "needs root to install ${missing[*]} (apt-get install ${PACKAGES[*]})"
    echo "slurm_cluster: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # a fresh machine may have no package lists yet: update only when the install fails for want of them
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start a daemon in the foreground, detached from this shell, its log in DIR/log/NAME.out; record
# its pid in DIR/pids
spawn() {
    local dir=$1 name=$2; shift 2
    setsid "$@" >"$dir/log/$name.out" 2>&1 </dev/null &
    echo "$! $name" >>"$dir/pids"
}

show_logs() {
    local dir=$1 f
    for f in "$dir"/log/*; do
        [ -s "$f" ] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }
    done
    return 0
}

start() {
    local dir=${1:?usage: slurm_cluster.sh start DIR}
    [ "$(id -u)" -eq 0 ] || die "runs as root (SlurmUser=root); this machine's user is $(id -un)"
    for c in munged slurmctld slurmd sinfo; do command -v $c >/dev/null || die "$c not found: run '$0 install'"; done
    [ -e "$dir/pids" ] && die "$dir/pids exists: a cluster was started there (stop it first)"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    chmod 755 "$dir"  # munged wants its socket's folders searchable by all (the key itself is 0600)
    mkdir -p "$dir/log" "$dir/state" "$dir/spool" "$dir/munge"
    : >"$dir/pids"
    local t0=$SECONDS

    # munge: our own key (created here), socket, pid and seed files
    dd if=/dev/urandom of="$dir/munge.key" bs=1024 count=1 status=none
    chmod 600 "$dir/munge.key"
    spawn "$dir" munged munged --foreground --force --socket="$dir/munge/munge.socket" \
        --key-file="$dir/munge.key" --pid-file="$dir/munge/munged.pid" --seed-file="$dir/munge/munged.seed"
    for _ in $(seq 100); do [ -S "$dir/munge/munge.socket" ] && break; sleep 0.1; done
    [ -S "$dir/munge/munge.socket" ] || { show_logs "$dir"; die "munged did not start"; }

    local host cpus mem_mb ctl_port d_port
    host=$(hostname -s)
    cpus=$(nproc)
    # conservative: 80% of the machine's memory, so the node never fails slurmd's memory check
    mem_mb=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.8 }' /proc/meminfo)
    ctl_port=$(free_port)
    d_port=$(free_port)
    while [ "$d_port" = "$ctl_port" ]; do d_port=$(free_port); done
    cat >"$dir/slurm.conf" <<EOF
# evalkit's test cluster (.ci/slurm_cluster.sh): one node on localhost, no accounting database
ClusterName=evalkit
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctl_port
SlurmdPort=$d_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=600
KillWait=2
InactiveLimit=0
EnforcePartLimits=ALL
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
# refuses every job at submission, as a cluster refuses an account it does not know
PartitionName=restricted Nodes=$host AllowAccounts=no-such-account MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF="$dir/slurm.conf"
    spawn "$dir" slurmctld slurmctld -D -c -i -f "$SLURM_CONF"
    spawn "$dir" slurmd slurmd -D -f "$SLURM_CONF" -N "$host"
    local state=""
    for _ in $(seq 300); do
        state=$(sinfo -h -n "$host" -o %t 2>/dev/null || true)
        [ "$state" = idle ] && break
        sleep 0.2
    done
    if [ "$state" != idle ]; then
        echo "slurm_cluster: node $host not idle after 60 s (state: ${state:-no answer})" >&2
        show_logs "$dir"
        stop "$dir"
        exit 1
    fi
    echo "slurm_cluster: up in $((SECONDS - t0)) s: node $host, $cpus CPUs, ${mem_mb} MB; SLURM_CONF=$SLURM_CONF" >&2
}

stop() {
    local dir=${1:?usage: slurm_cluster.sh stop DIR}
    [ -f "$dir/pids" ] || { echo "slurm_cluster: no cluster in $dir" >&2; return 0; }
    export SLURM_CONF="$dir/slurm.conf"
    # jobs first, so no job step outlives slurmd
    local jobs
    jobs=$(timeout 10 squeue -h -o %A 2>/dev/null || true)
    if [ -n "$jobs" ]; then
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null || true
        for _ in $(seq 60); do
            [ -z "$(timeout 10 squeue -h -t R,CG,S -o %A 2>/dev/null || true)" ] && break
            sleep 0.25
        done
    fi
    local pid name alive
    # slurmd, slurmctld, then munged (the reverse of the start order)
    for pid in $(tac "$dir/pids" | awk '{print $1}'); do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do
        alive=0
        while read -r pid name; do kill -0 "$pid" 2>/dev/null && alive=1; done <"$dir/pids"
        [ $alive -eq 0 ] && break
        sleep 0.2
    done
    while read -r pid name; do
        if kill -0 "$pid" 2>/dev/null; then
            echo "slurm_cluster: $name ($pid) ignored SIGTERM: SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done <"$dir/pids"
    mv "$dir/pids" "$dir/pids.stopped"
    echo "slurm_cluster: stopped ($dir)" >&2
}

run() {
    [ $# -gt 0 ] || die "usage: slurm_cluster.sh run CMD..."
    install
    local dir rc=0
    dir=$(mktemp -d /tmp/evalkit-slurm.XXXXXX)
    # shellcheck disable=SC2064
    trap "stop '$dir'; rm -rf '$dir'" EXIT
    trap 'exit 130' INT TERM
    start "$dir"
    "$@" || rc=$?
    if [ $rc -ne 0 ]; then show_logs "$dir"; fi
    exit $rc
}

cmd=${1:-}
shift || true
case $cmd in
    install) install ;;
    start) start "$@" ;;
    stop) stop "$@" ;;
    run) run "$@" ;;
    *) die "usage: $0 install | start DIR | stop DIR | run CMD..." ;;
esac
