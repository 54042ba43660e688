#!/usr/bin/env bash
# start_slurm.sh -- install, configure and start a real single-node SLURM cluster on
# this machine, without systemd. Idempotent: run it again and it only does what is
# missing (installs missing packages, starts daemons that are not running, restarts
# the slurm daemons it owns if the generated config changed).
#
# Usage, to try cluster sweeps on one machine (and what .ci/run does for tests/test_slurm.py):
#   sudo SLURM_CPUS=8 bash scripts/slurm/start_slurm.sh   # 8 one-CPU jobs side by side
#   python scripts/train.py -m launcher=slurm hydra.launcher.cpus_per_task=1 seed=0,1,2
#   squeue; sacct                                          # the jobs, while and after they run
#   sudo bash scripts/slurm/stop_slurm.sh                  # stops only what this script started
#
# Tested on Debian 12 (bookworm), slurm-wlm 22.05.8, munge 0.5.15, MariaDB 10.11,
# as root, in a firecracker VM whose PID 1 is not systemd.
#
# Knobs (environment variables):
#   SLURM_LOCAL_DIR   state/spool/log/pid directory      (default: slurm-local in the temp dir)
#   SLURM_ACCOUNTING  1: slurmdbd + MariaDB, so `sacct` works (submitit polls sacct)
#                     0: no accounting (sacct fails; submitit still gets results,
#                        but hangs on jobs that die without a result pickle)  (default 1)
#   SLURM_CPUS        CPUs the node advertises (default: detected). More than the
#                     hardware has is allowed (SlurmdParameters=config_overrides).
#   SLURM_PARTITION   partition name                     (default debug)
#   SLURM_CLUSTER     cluster name                       (default local)
#   SLURM_DB_PASS     password of the 'slurm' MariaDB user (default slurmdbpass; DB is
#                     reachable only through the local unix socket, no TCP)
#
# Everything is bound to / addressed as 127.0.0.1; no traffic leaves loopback.
# Daemons started by this script are recorded in $SLURM_LOCAL_DIR/run/started.list;
# stop_slurm.sh stops exactly those (by pid file), in reverse order.
set -euo pipefail

D=${SLURM_LOCAL_DIR:-$(dirname "$(mktemp -u)")/slurm-local}
ACCT=${SLURM_ACCOUNTING:-1}
PART=${SLURM_PARTITION:-debug}
CLUSTER=${SLURM_CLUSTER:-local}
DBPASS=${SLURM_DB_PASS:-slurmdbpass}
CONF=/etc/slurm/slurm.conf
DBDCONF=/etc/slurm/slurmdbd.conf
STARTED=$D/run/started.list

log() { printf '[start_slurm %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"
T0=$SECONDS

# ---------------------------------------------------------------- 1. packages
PKGS=(slurmctld slurmd slurm-client munge)
[ "$ACCT" = 1 ] && PKGS+=(slurmdbd mariadb-server)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing: ${missing[*]}"
  # Keep package postinst scripts from starting daemons themselves (we start them
  # below and track their pids). Only add a policy-rc.d if the machine has none.
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; own_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ "$own_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
  log "packages installed ($((SECONDS - T0)) s)"
else
  log "packages already installed"
fi

# ---------------------------------------------------------------- 2. host name
H=$(hostname -s)
if ! getent hosts "$H" >/dev/null; then
  log "hostname $H does not resolve; adding it to /etc/hosts as 127.0.0.1"
  echo "127.0.0.1 $H" >> /etc/hosts
fi

# ---------------------------------------------------------------- 3. dirs, munge key
mkdir -p "$D"/{ctld,spool,log,run} /etc/slurm
touch "$STARTED"
if [ ! -s /etc/munge/munge.key ]; then
  log "creating munge key"
  mkdir -p /etc/munge
  if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key --force
  else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
  chown munge:munge /etc/munge /etc/munge/munge.key; chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
fi

# ---------------------------------------------------------------- 4. config
declare -A HW
for kv in $(slurmd -C | head -1); do HW[${kv%%=*}]=${kv#*=}; done
MEM=$(( HW[RealMemory] * 90 / 100 ))            # leave headroom, or the node drains "Low RealMemory"
CPUS=${SLURM_CPUS:-${HW[CPUs]}}
if [ "$CPUS" = "${HW[CPUs]}" ]; then
  NODE_HW="CPUs=$CPUS Sockets=${HW[SocketsPerBoard]} CoresPerSocket=${HW[CoresPerSocket]} ThreadsPerCore=${HW[ThreadsPerCore]}"
  OVERRIDE=""
else
  NODE_HW="CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1"
  OVERRIDE="SlurmdParameters=config_overrides"
fi
if [ "$ACCT" = 1 ]; then
  ACCT_CONF="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
else
  ACCT_CONF="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi

NEW_CONF="# generated by start_slurm.sh -- single-node cluster on $H, all on 127.0.0.1
ClusterName=$CLUSTER
SlurmctldHost=$H(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
MailProg=/bin/true
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
StateSaveLocation=$D/ctld
SlurmdSpoolDir=$D/spool
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$(( MEM / CPUS ))
$ACCT_CONF
JobCompType=jobcomp/none
InactiveLimit=0
KillWait=5
Waittime=0
MinJobAge=300
$OVERRIDE
NodeName=$H NodeAddr=127.0.0.1 NodeHostname=$H $NODE_HW RealMemory=$MEM State=UNKNOWN
PartitionName=$PART Nodes=$H Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"
CHANGED=0
if ! printf '%s' "$NEW_CONF" | cmp -s - "$CONF"; then
  printf '%s' "$NEW_CONF" > "$CONF.tmp" && mv "$CONF.tmp" "$CONF"; CHANGED=1
  log "wrote $CONF"
fi
if [ "$ACCT" = 1 ]; then
  NEW_DBD="# generated by start_slurm.sh
AuthType=auth/munge
DbdHost=$H
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$D/run/slurmdbd.pid
LogFile=$D/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
"
  if ! printf '%s' "$NEW_DBD" | cmp -s - "$DBDCONF"; then
    (umask 077; printf '%s' "$NEW_DBD" > "$DBDCONF"); CHANGED=1
    log "wrote $DBDCONF"
  fi
  chmod 600 "$DBDCONF"
fi

# ---------------------------------------------------------------- 5. daemons
# alive NAME PIDFILE: the pid file names a live process whose command is NAME
alive() { local pid; pid=$(cat "$2" 2>/dev/null) || return 1; [ -n "$pid" ] && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$1" ] && ! grep -q ') Z ' /proc/"$pid"/stat 2>/dev/null; }
record() { grep -qx "$1 $2" "$STARTED" || echo "$1 $2" >> "$STARTED"; }
owned() { grep -qx "$1 $2" "$STARTED"; }
wait_for() { # wait_for SECONDS DESCRIPTION CMD...
  local n=$(( $1 * 10 )) what=$2; shift 2
  for ((i = 0; i < n; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "timed out waiting for $what"
}
port_open() { timeout 1 bash -c "</dev/tcp/127.0.0.1/$1"; }
stop_pid() { # stop_pid NAME PIDFILE -- only if it is ours
  alive "$1" "$2" || return 0
  local pid; pid=$(cat "$2"); kill "$pid"
  for ((i = 0; i < 200; i++)); do alive "$1" "$2" || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

# munged
MUNGE_PID=/run/munge/munged.pid
if alive munged "$MUNGE_PID"; then
  log "munged already running (pid $(cat $MUNGE_PID))"
else
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge; chmod 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged            # daemonizes, writes $MUNGE_PID
  record munged "$MUNGE_PID"
  log "started munged (pid $(cat $MUNGE_PID))"
fi
munge -n | unmunge >/dev/null || die "munge round trip failed"

if [ "$ACCT" = 1 ]; then
  # MariaDB, unix socket only (--skip-networking)
  MDB_PID=$D/mariadb/mariadb.pid
  mkdir -p "$D/mariadb" /run/mysqld; chown mysql:mysql "$D/mariadb" /run/mysqld
  if alive mariadbd "$MDB_PID"; then
    log "mariadbd already running (pid $(cat "$MDB_PID"))"
  elif mysqladmin --socket=/run/mysqld/mysqld.sock ping >/dev/null 2>&1; then
    log "a MariaDB server not started by this script answers on /run/mysqld/mysqld.sock; using it"
  else
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    setsid /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql --pid-file="$MDB_PID" \
      --socket=/run/mysqld/mysqld.sock --skip-networking --log-error="$D/mariadb/mariadb.log" \
      --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
    wait_for 60 "mariadbd" mysqladmin --socket=/run/mysqld/mysqld.sock ping
    wait_for 10 "mariadb pid file" alive mariadbd "$MDB_PID"
    record mariadbd "$MDB_PID"
    log "started mariadbd (pid $(cat "$MDB_PID"))"
  fi
  mysql --socket=/run/mysqld/mysqld.sock -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
    ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

  DBD_PID=$D/run/slurmdbd.pid
  if alive slurmdbd "$DBD_PID" && [ "$CHANGED" = 1 ] && owned slurmdbd "$DBD_PID"; then
    log "config changed: restarting slurmdbd"; stop_pid slurmdbd "$DBD_PID"
  fi
  if alive slurmdbd "$DBD_PID"; then
    log "slurmdbd already running (pid $(cat "$DBD_PID"))"
  else
    slurmdbd                                         # daemonizes, writes $DBD_PID
    wait_for 60 "slurmdbd on port 6819" port_open 6819
    record slurmdbd "$DBD_PID"
    log "started slurmdbd (pid $(cat "$DBD_PID"))"
  fi
fi

CTLD_PID=$D/run/slurmctld.pid
SLURMD_PID=$D/run/slurmd.pid
if [ "$CHANGED" = 1 ]; then
  for n in slurmd slurmctld; do
    pf=$D/run/$n.pid
    if alive "$n" "$pf" && owned "$n" "$pf"; then log "config changed: restarting $n"; stop_pid "$n" "$pf"; fi
  done
fi
if alive slurmctld "$CTLD_PID"; then
  log "slurmctld already running (pid $(cat "$CTLD_PID"))"
else
  slurmctld                                          # daemonizes, writes $CTLD_PID
  wait_for 60 "slurmctld" scontrol ping
  record slurmctld "$CTLD_PID"
  log "started slurmctld (pid $(cat "$CTLD_PID"))"
fi
if alive slurmd "$SLURMD_PID"; then
  log "slurmd already running (pid $(cat "$SLURMD_PID"))"
else
  slurmd                                             # daemonizes, writes $SLURMD_PID
  wait_for 30 "slurmd pid file" alive slurmd "$SLURMD_PID"
  record slurmd "$SLURMD_PID"
  log "started slurmd (pid $(cat "$SLURMD_PID"))"
fi

# ---------------------------------------------------------------- 6. node ready
node_ready() { sinfo -h -n "$H" -o %T | grep -qE '^(idle|mixed|allocated|completing)'; }
for ((i = 0; i < 300; i++)); do
  node_ready && break
  st=$(sinfo -h -n "$H" -o %T 2>/dev/null || true)
  case "$st" in down*|drain*|drained*) scontrol update NodeName="$H" State=RESUME 2>/dev/null || true ;; esac
  sleep 0.2
done
node_ready || die "node $H not ready: $(sinfo -h -n "$H" -o '%T %E')"
if [ "$ACCT" = 1 ]; then
  wait_for 30 "cluster in accounting" bash -c "sacctmgr -n -P show cluster format=cluster | grep -qx $CLUSTER"
fi
log "cluster up in $((SECONDS - T0)) s: $(sinfo -h -o '%P %a %D %T %N')"
