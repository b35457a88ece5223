#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine (Debian's slurm-wlm and munge: munged, slurmctld, slurmd with
# a generated slurm.conf), then a small sweep through it end to end: `compress sweep --slurm` submits one array
# task per point and a dependent collect job; this script waits for them and prints the table. Run by hand (as
# root; installs the packages when missing); CI does not need it.
#   tools/slurm_local.sh [RECIPE --set PATH=V1,... ...]   default: FinerCut on the tiny fixture, 3 points
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
for pkg in slurm-wlm munge; do
    dpkg -s "$pkg" >/dev/null 2>&1 || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; break; }
done
swift build -c release --product compress >/dev/null
compress=$root/.build/release/compress

# munge: a key and the daemon.
mkdir -p /etc/munge /var/log/munge /run/munge /var/lib/munge
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
chown -R munge:munge /etc/munge /var/log/munge /run/munge /var/lib/munge 2>/dev/null || true
chmod 0400 /etc/munge/munge.key
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged

# slurm.conf for this one node (its CPUs and memory as the kernel reports them).
host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 30); do sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mixed|allocated' && break; sleep 1; done
sinfo

# The sweep.
work=$(mktemp -d /tmp/compress-slurm-XXXX)
if [ $# -gt 0 ]; then
    recipe=$1; shift; sets=("$@")
else
    for _ in $(seq 40); do echo "The quick brown fox jumps over the lazy dog; 0123456789."; done > "$work/text.txt"
    recipe=$work/tiny.json
    cat > "$recipe" <<JSON
{"format": 1, "name": "tiny-finercut-slurm", "base": "$root/Tests/Fixtures/tiny-llama.h5",
 "calibration": {"text": "$work/text.txt", "samples": 3, "window": 16, "seed": 1},
 "eval": {"text": "$work/text.txt", "window": 32},
 "stages": [{"stage": "finercut", "remove": 1}, {"stage": "eval"}], "output": "$work/x.h5"}
JSON
    sets=(--set stages.0.remove=1,2,3)
fi
"$compress" sweep "$recipe" "${sets[@]}" -o "$work/sweep" --slurm --partition local --cpus-per-task "$cpus" --keep all
echo "waiting for the jobs (squeue):"
while [ -n "$(squeue -h -o %i 2>/dev/null)" ]; do squeue -h -o '%i %j %T'; sleep 2; done
echo "collect job log:"; cat "$work/sweep/slurm/collect.log"
"$compress" sweep collect "$work/sweep"
echo "sweep directory: $work/sweep"
