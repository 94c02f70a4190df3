#!/usr/bin/env bash
# Install and start a one-node SLURM cluster on localhost (Debian ``slurm-wlm`` + ``munge``) without systemd, as
# root, for the tests marked ``slurm`` (AiiDA's ``core.slurm`` scheduler over ``core.local``).
#
#   * ``select/cons_tres`` with ``CR_Core_Memory`` and ``DefMemPerCPU`` so that jobs share the node,
#   * a GPU GRES declared with ``File=/dev/null``: ``--gres=gpu:1`` is schedulable on a machine without a GPU,
#   * daemons bound to loopback, no accounting database, no cgroups.
#
# Idempotent: running daemons are left alone when the configuration did not change.
set -euo pipefail

log() { printf '[setup_slurm] %s\n' "$*" >&2; }
fail() { log "ERROR: $*"; exit 1; }

[[ "$(id -u)" -eq 0 ]] || fail "run as root (installs packages, starts munged, slurmctld and slurmd)"

READY_TIMEOUT_S="${AUTOPIPEC_SLURM_TIMEOUT:-60}"
CONF_DIR=/etc/slurm
GPUS="${AUTOPIPEC_SLURM_GPUS:-1}"

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    log "installing slurm-wlm munge"
    added_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then  # forbid service starts by the package scripts
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && added_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
    if [[ "$added_policy" == 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi
fi

# ---- munge: authentication between the SLURM daemons and clients
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- munged --force
    for _ in $(seq 1 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null || fail "munged does not authenticate (munge -n | unmunge failed)"
fi
log "munge: ok"

# ---- slurm.conf / gres.conf for this node
cpus="$(nproc)"
memory_mb="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
install -d "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
chown slurm:slurm /var/spool/slurmctld /var/log/slurm 2>/dev/null || true
new_conf="$(mktemp)"
cat >"$new_conf" <<CONF
# Written by .ci/setup_slurm.sh: a one-node test cluster on localhost.
ClusterName=autopipec
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
GresTypes=gpu
ReturnToService=2
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb Gres=gpu:$GPUS State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
new_gres="$(mktemp)"
{
    echo "# Written by .ci/setup_slurm.sh: GPUs declared on /dev/null so --gres=gpu:N schedules without a GPU."
    echo "NodeName=localhost Name=gpu Count=$GPUS File=/dev/null"
} >"$new_gres"

changed=0
for pair in "$new_conf:$CONF_DIR/slurm.conf" "$new_gres:$CONF_DIR/gres.conf"; do
    source_file="${pair%%:*}" target="${pair#*:}"
    if ! cmp -s "$source_file" "$target"; then
        install -m 0644 "$source_file" "$target"
        changed=1
    fi
    rm -f "$source_file"
done

# ---- daemons
running() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
if [[ "$changed" == 1 ]]; then
    for pid_file in /run/slurm/slurmd.pid /run/slurm/slurmctld.pid; do
        if running "$pid_file"; then
            kill "$(cat "$pid_file")"
            for _ in $(seq 1 50); do running "$pid_file" || break; sleep 0.1; done
        fi
    done
fi
running /run/slurm/slurmctld.pid || slurmctld -i || fail "slurmctld did not start (see /var/log/slurm/slurmctld.log)"
running /run/slurm/slurmd.pid || slurmd -N localhost || fail "slurmd did not start (see /var/log/slurm/slurmd.log)"

# ---- ready: the node is idle and a job requesting a GPU runs
deadline=$((SECONDS + READY_TIMEOUT_S))
until [[ "$(sinfo -h -n localhost -o '%T' 2>/dev/null)" =~ ^(idle|mixed|allocated) ]]; do
    if ((SECONDS > deadline)); then
        sinfo -N -l >&2 || true
        tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
        fail "node localhost not ready within ${READY_TIMEOUT_S} s (logs above)"
    fi
    sleep 0.5
done
output="$(timeout "$READY_TIMEOUT_S" srun --gres="gpu:1" --time=1 -N1 -n1 bash -c 'echo "job $SLURM_JOB_ID"')" ||
    fail "a test job with --gres=gpu:1 did not run (srun failed)"
log "ready: $(sinfo -V), node localhost $(sinfo -h -n localhost -o '%T %c CPUs %G'), test $output"
