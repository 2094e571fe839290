#!/usr/bin/env bash
# Start (or confirm) a one-node SLURM cluster on this machine, for tests that submit jobs
# through submitit. Debian bookworm (slurm-wlm 22.05), run as root, no systemd needed:
# daemons are started directly. Idempotent: running it again while the cluster is up only
# re-checks it (a changed slurm.conf restarts the daemons that read it).
# Exits 0 once `sinfo` reports the node usable; otherwise prints one line to stderr and
# exits non-zero.
#
# No accounting (no slurmdbd): effbench reads what lives from the queue (`squeue -t all`) and
# what finished from its records, never from `sacct`, which fails here ("Slurm accounting
# storage is disabled"); submitit's own job.state then says UNKNOWN, and effbench does not
# use it.
#
# Daemons and logs: munged, slurmctld, slurmd (/var/log/slurm/). Partition: debug (default,
# no time limit).
set -uo pipefail

die() { echo "slurm-up: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"

# 1. packages
need_install=0
for cmd in sbatch squeue slurmctld slurmd munged; do
    command -v "$cmd" >/dev/null 2>&1 || need_install=1
done
if [ "$need_install" = 1 ]; then
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
        slurm-wlm munge; } >/tmp/slurm-up-apt.log 2>&1 \
        || die "apt-get install slurm-wlm munge failed (see /tmp/slurm-up-apt.log)"
fi

HOST="$(hostname -s)"
[ -n "$HOST" ] || die "hostname -s is empty"
CPUS="$(nproc)"
MEM_TOTAL="$(free -m | awk '/^Mem:/ {print $2}')"
# RealMemory a bit below what the machine has, or slurmd drains the node ("Low RealMemory").
REAL_MEM=$(( MEM_TOTAL * 90 / 100 ))
[ "$REAL_MEM" -gt 0 ] || die "could not read memory size from free -m"

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
stop() {  # stop the daemon whose pid file is $1, wait up to 5 s
    if running "$1"; then
        kill "$(cat "$1")" 2>/dev/null
        for _ in $(seq 1 50); do running "$1" || break; sleep 0.1; done
    fi
}
# write_if_changed FILE CONTENT: returns 0 when FILE was (re)written
write_if_changed() {
    if [ ! -f "$1" ] || [ "$(cat "$1")" != "$2" ]; then
        printf '%s\n' "$2" >"$1"
        return 0
    fi
    return 1
}

# 2. munge
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key >/dev/null 2>&1 \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none \
        || die "could not create /etc/munge/munge.key"
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
chmod 0400 /etc/munge/munge.key
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if ! munge_ok; then
    runuser -u munge -- /usr/sbin/munged --force >/dev/null 2>&1 || die "munged failed to start"
    for _ in $(seq 1 50); do munge_ok && break; sleep 0.1; done
    munge_ok || die "munge does not answer after starting munged"
fi

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm

# 4. slurm.conf
CONF="$(cat <<EOF
# Written by .ci/slurm-up.sh: one-node cluster for tests.
ClusterName=effbench
SlurmctldHost=${HOST}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
# requeued jobs wait cred_expire seconds before they may start again (default 120)
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
JobRequeue=1
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
MinJobAge=300
Waittime=0
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
NodeName=${HOST} CPUs=${CPUS} RealMemory=${REAL_MEM} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
EOF
)"
if write_if_changed /etc/slurm/slurm.conf "$CONF"; then
    # a changed configuration needs fresh daemons
    stop /run/slurm/slurmd.pid
    stop /run/slurm/slurmctld.pid
fi

# 5. slurmctld + slurmd
if ! running /run/slurm/slurmctld.pid; then
    /usr/sbin/slurmctld || die "slurmctld failed to start (see /var/log/slurm/slurmctld.log)"
fi
for _ in $(seq 1 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
scontrol ping 2>/dev/null | grep -q UP || die "slurmctld does not answer (see /var/log/slurm/slurmctld.log)"
if ! running /run/slurm/slurmd.pid; then
    /usr/sbin/slurmd || die "slurmd failed to start (see /var/log/slurm/slurmd.log)"
fi

# 6. wait for the node
deadline=$(( SECONDS + 30 ))
state=""
while [ "$SECONDS" -lt "$deadline" ]; do
    state="$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n1)"
    case "$state" in
        idle | mixed | allocated | completing) break ;;
        down* | drain* | drained* | fail*)
            scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 ;;
    esac
    sleep 0.5
done
case "$state" in
    idle | mixed | allocated | completing) ;;
    *) die "node ${HOST} not usable after 30 s (sinfo state: '${state:-none}'; see /var/log/slurm/)" ;;
esac
sinfo >/dev/null 2>&1 || die "sinfo fails"
echo "slurm-up: cluster up, node ${HOST} ${state}, ${CPUS} CPUs, ${REAL_MEM} MB, partition debug"
