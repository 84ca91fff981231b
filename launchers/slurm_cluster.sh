#!/usr/bin/env bash
# A real single-node Slurm cluster on a Debian machine, for development and CI (root, no systemd needed):
# munge, MariaDB + slurmdbd (accounting: without it a job cancelled from outside leaves submitit's result()
# hanging), slurmctld and slurmd, one partition "debug" holding this machine.
#
#   launchers/slurm_cluster.sh install   apt packages (slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
#   launchers/slurm_cluster.sh up        write the configs, start every daemon, wait until the node is idle
#   launchers/slurm_cluster.sh down      cancel all jobs, stop every daemon
#   launchers/slurm_cluster.sh status    sinfo + squeue
#
# State, logs and spool live in $CPT_SLURM_DIR (default /var/tmp/cpt-slurm); `up` starts from a clean state.
set -euo pipefail

DIR=${CPT_SLURM_DIR:-/var/tmp/cpt-slurm}
HOST=$(hostname -s)
CPUS=$(nproc)
MEM=$(( $(free -m | awk '/^Mem:/ {print $2}') - 2048 ))

log() { echo "[slurm_cluster] $*"; }

install() {
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    slurmctld slurmd slurm-client slurmdbd munge mariadb-server
}

write_configs() {
  mkdir -p "$DIR"/{state,spool,log,run} /etc/slurm
  cat > /etc/slurm/slurm.conf <<EOF
ClusterName=cpt
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
JobRequeue=1
SchedulerParameters=bf_interval=1,sched_min_interval=0,sched_interval=2
MinJobAge=5
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
  cat > /etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
EOF
  chmod 600 /etc/slurm/slurmdbd.conf
}

wait_for() {  # wait_for <seconds> <command...>
  local limit=$1; shift
  for _ in $(seq "$limit"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  "$@"
}

up() {
  command -v slurmctld >/dev/null || install
  down >/dev/null 2>&1 || true
  rm -rf "$DIR"
  write_configs

  mkdir -p /run/munge && chown munge:munge /run/munge
  runuser -u munge -- /usr/sbin/munged --force
  wait_for 10 munge -n
  log "munge up"

  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  (mariadbd --user=mysql --socket=/run/mysqld/mysqld.sock --pid-file=/run/mysqld/mysqld.pid \
     >"$DIR/log/mariadb.log" 2>&1 &)
  wait_for 30 mysql -e "SELECT 1"
  # a clean state means clean accounting too: job ids restart at 1, and old records of the same ids would make
  # submitit believe a new job had already ended
  mysql -e "DROP DATABASE IF EXISTS slurm_acct_db;
            CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  log "mariadb up"

  slurmdbd
  wait_for 30 sacctmgr -n list cluster
  sacctmgr -i add cluster cpt >/dev/null 2>&1 || true
  log "slurmdbd up"

  slurmctld
  wait_for 30 scontrol ping
  slurmd
  wait_for 60 bash -c "sinfo -h -o %t | grep -qx idle"
  log "cluster up: $(sinfo -h -o '%P %D %t %c CPUs %m MB')"
}

down() {
  local daemons="slurmd slurmctld slurmdbd mariadbd munged"
  scancel --state=PENDING,RUNNING,SUSPENDED -u root 2>/dev/null || true
  for daemon in $daemons; do pkill -x "$daemon" 2>/dev/null || true; done
  for _ in $(seq 20); do
    local alive=0
    for daemon in $daemons; do pgrep -x "$daemon" >/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.5
  done
  for daemon in $daemons; do pkill -9 -x "$daemon" 2>/dev/null || true; done
  log "cluster down"
}

status() { sinfo; squeue; }

case "${1:-}" in
  install) install ;;
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 install|up|down|status" >&2; exit 2 ;;
esac
