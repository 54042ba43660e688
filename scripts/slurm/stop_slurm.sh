#!/usr/bin/env bash
# stop_slurm.sh -- stop exactly the daemons that start_slurm.sh started, by their pid
# files (listed in $SLURM_LOCAL_DIR/run/started.list): slurmd, slurmctld,
# slurmdbd, mariadbd, munged. Never kills by
# name: a pid is signalled only if /proc/PID/comm is the expected daemon name.
# Running jobs are cancelled first (SLURM_STOP_CANCEL_JOBS=0 to skip).
# Leaves packages, config, the state directory and the accounting DB in place.
# Usage: sudo bash scripts/slurm/stop_slurm.sh   (with the SLURM_LOCAL_DIR given to start_slurm.sh, if any)
set -uo pipefail

D=${SLURM_LOCAL_DIR:-$(dirname "$(mktemp -u)")/slurm-local}
STARTED=$D/run/started.list
log() { printf '[stop_slurm %(%H:%M:%S)T] %s\n' -1 "$*"; }
alive() { local pid; pid=$(cat "$2" 2>/dev/null) || return 1; [ -n "$pid" ] && running "$pid" "$1"; }
# running PID NAME: PID is a live (not zombie) process whose command is NAME
running() { [ "$(cat /proc/"$1"/comm 2>/dev/null)" = "$2" ] && ! grep -q ') Z ' /proc/"$1"/stat 2>/dev/null; }

[ -s "$STARTED" ] || { log "nothing recorded in $STARTED; nothing to stop"; exit 0; }

# cancel jobs so that no slurmstepd / job process outlives slurmd
if [ "${SLURM_STOP_CANCEL_JOBS:-1}" = 1 ] && alive slurmctld "$D/run/slurmctld.pid"; then
  jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    log "cancelling jobs: $jobs"
    scancel $jobs 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi

# stop in dependency order, only what start_slurm.sh recorded as started by it
for want in slurmd slurmctld slurmdbd mariadbd munged; do
  line=$(grep -m1 "^$want " "$STARTED") || continue
  name=${line%% *}; pidfile=${line#* }
  if alive "$name" "$pidfile"; then
    pid=$(cat "$pidfile")
    kill -TERM "$pid"
    for ((i = 0; i < 300; i++)); do running "$pid" "$name" || break; sleep 0.1; done
    if running "$pid" "$name"; then
      log "$name (pid $pid) did not exit in 30 s; sending KILL"; kill -KILL "$pid" 2>/dev/null
    fi
    log "stopped $name (pid $pid)"
  else
    log "$name not running (pid file $pidfile)"
  fi
done
: > "$STARTED"
