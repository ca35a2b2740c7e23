#!/usr/bin/env bash
# A private single-node SLURM cluster (munged + slurmctld + slurmd) for the SLURM tests.
#   tests/slurm/harness.sh start   stand it up (about 2 s) and wait until its node is idle
#   tests/slurm/harness.sh stop    cancel its jobs, stop exactly the daemons it started, delete
#                                  its state folder
# Everything lives in $LLT_SLURM_STATE (default /tmp/llt-slurm-<uid>): its own slurm.conf (clients
# find it through SLURM_CONF=$LLT_SLURM_STATE/slurm.conf), its own munge key and socket, its own
# free TCP ports, pid files and logs, so it never touches /etc/slurm, /etc/munge or another SLURM
# on the machine, and two build folders can run their suites at once.
# Partitions `main` (default) and `gpu` as on CARC Discovery; fake GPUs of types p100 and a100
# (character devices in the state folder, not /dev) so `--gres=gpu:p100:1` is accepted while CUDA
# still sees no GPU. Needs root and the Debian packages slurmctld slurmd slurm-client munge;
# without them `start` exits 77 (CTest's skip code) saying which is missing.
set -euo pipefail

state=${LLT_SLURM_STATE:-/tmp/llt-slurm-$(id -u)}
conf=$state/slurm.conf
node=localhost
say() { printf '[harness] %s\n' "$*"; }
die() { printf '[harness] ERROR: %s\n' "$*" >&2; exit 1; }
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Stops the daemons named in pid files `NAME:PIDFILE`..., each only if its pid still runs that
# program (pids get reused): TERM to all at once (each takes 1-2 s to exit), KILL after 10 s.
stop_daemons() {
  local entry name pidfile pid pids=()
  for entry in "$@"; do
    name=${entry%%:*} pidfile=${entry#*:}
    [[ -s $pidfile ]] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$name"; then
      kill -TERM "$pid" && pids+=("$pid") && say "stopping $name (pid $pid)"
    fi
    rm -f "$pidfile"
  done
  for _ in $(seq 100); do
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && sleep 0.1 && continue 2; done
    return 0
  done
  for pid in "${pids[@]}"; do
    kill -KILL "$pid" 2>/dev/null && say "pid $pid ignored TERM: killed"
  done
  return 0
}

stop() {
  if [[ -f $conf ]] && alive "$state/run/slurmctld.pid"; then
    local jobs
    jobs=$(SLURM_CONF=$conf squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ' || true)
    if [[ -n ${jobs// /} ]]; then
      say "cancelling jobs $jobs"
      # shellcheck disable=SC2086
      SLURM_CONF=$conf scancel $jobs 2>/dev/null || true
      for _ in $(seq 50); do
        [[ -z $(SLURM_CONF=$conf squeue -h -t R,CG 2>/dev/null) ]] && break
        sleep 0.2
      done
    fi
  fi
  stop_daemons "slurmd:$state/run/slurmd.pid" "slurmctld:$state/run/slurmctld.pid" \
    "munged:$state/run/munged.pid"
  [[ ${LLT_SLURM_KEEP_STATE:-0} == 1 ]] || rm -rf "$state"
}

# A TCP port nothing listens on, from `first` upwards.
free_port() {
  local p=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
  echo "$p"
}

# munged runs as the munge user (it refuses root) with its key and state in a private folder and
# its socket in one every client can reach.
start_munge() {
  local m=$state/munge
  mkdir -p "$m/private"
  dd if=/dev/urandom of="$m/private/munge.key" bs=1024 count=1 status=none
  chown -R munge:munge "$m"
  chmod 755 "$m"
  chmod 700 "$m/private"
  chmod 400 "$m/private/munge.key"
  runuser -u munge -- munged --socket="$m/munge.socket" --key-file="$m/private/munge.key" \
    --pid-file="$m/private/munged.pid" --log-file="$m/private/munged.log" \
    --seed-file="$m/private/munged.seed" \
    || die "munged did not start; see $m/private/munged.log"
  cp "$m/private/munged.pid" "$state/run/munged.pid"
  for _ in $(seq 50); do
    munge -n --socket="$m/munge.socket" 2>/dev/null | unmunge --socket="$m/munge.socket" \
      >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "munge self-test failed; see $m/private/munged.log"
}

write_conf() {
  # The node as slurmd sees it: a CPU or memory mismatch drains the node.
  local hw cpus sockets cores threads mem ctld_port slurmd_port key
  hw=$(slurmd -C | head -1)
  field() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<<"$hw"; }
  cpus=$(field CPUs) sockets=$(field SocketsPerBoard) cores=$(field CoresPerSocket)
  threads=$(field ThreadsPerCore) mem=$(field RealMemory)
  mem=$((mem > 2048 ? mem - 1024 : mem))
  key=$(cksum <<<"$state" | cut -d' ' -f1)
  ctld_port=$(free_port $((7000 + key % 4000)))  # below the ephemeral and MASTER_PORT ranges
  slurmd_port=$(free_port $((ctld_port + 1)))
  mkdir -p "$state/fakegpu"
  for i in 0 1 2 3; do  # major 195 is nvidia's; nothing opens these
    mknod "$state/fakegpu/gpu$i" c 195 "$i" 2>/dev/null || : >"$state/fakegpu/gpu$i"
  done
  cat >"$state/gres.conf" <<EOF
AutoDetect=off
NodeName=$node Name=gpu Type=p100 File=$state/fakegpu/gpu[0-1]
NodeName=$node Name=gpu Type=a100 File=$state/fakegpu/gpu[2-3]
EOF
  cat >"$conf" <<EOF
# written by tests/slurm/harness.sh
ClusterName=llt$((key % 100000))
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$state/munge/munge.socket
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/run/slurmctld.pid
SlurmdPidFile=$state/run/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
# Start jobs as soon as they are submitted; cancel jobs whose afterok can never be met.
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=100000
DependencyParameters=kill_invalid_depend
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
ReturnToService=2
InactiveLimit=0
MinJobAge=600
KillWait=5
Waittime=0
# No slurmdbd: sacct says accounting storage is disabled; sstat works on running steps.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobCompType=jobcomp/none
GresTypes=gpu
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus Sockets=$sockets CoresPerSocket=$cores \
  ThreadsPerCore=$threads RealMemory=$mem Gres=gpu:p100:2,gpu:a100:2 State=UNKNOWN
PartitionName=main Nodes=$node Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$node Default=NO MaxTime=INFINITE State=UP
EOF
  chmod 644 "$conf" "$state/gres.conf"
}

wait_idle() {
  local s=""
  for _ in $(seq 300); do
    s=$(sinfo -h -n "$node" -o %T 2>/dev/null | sort -u | head -1 || true)
    case $s in idle | mixed | allocated | inval* | drain*) break ;; esac
    sleep 0.2
  done
  [[ $s == idle || $s == mixed || $s == allocated ]] && return 0
  scontrol show node "$node" >&2 || true
  tail -n 20 "$state/log/slurmctld.log" "$state/log/slurmd.log" >&2 || true
  die "node $node not ready (state '$s')"
}

start() {
  if [[ $(id -u) -ne 0 ]]; then
    echo "SKIPPED: the SLURM tests need root (they start slurmctld, slurmd and munged)"
    exit 77
  fi
  local missing=() c
  for c in slurmctld slurmd sbatch munged; do command -v "$c" >/dev/null || missing+=("$c"); done
  if ((${#missing[@]})); then
    echo "SKIPPED: ${missing[*]} not installed (scripts/install-deps.sh installs slurmctld" \
      "slurmd slurm-client munge)"
    exit 77
  fi
  local t0=$SECONDS
  stop  # leftovers of an interrupted run
  trap 'echo "[harness] start failed; stopping what was started" >&2; stop' EXIT
  mkdir -p "$state"/{run,log,ctld,spool}
  chmod 755 "$state"
  export SLURM_CONF=$conf
  start_munge
  write_conf
  slurmctld -c -f "$conf" || die "slurmctld did not start; see $state/log/slurmctld.log"
  for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.1; done
  scontrol ping | grep -q 'is UP' || die "slurmctld does not answer; see $state/log/slurmctld.log"
  slurmd -N "$node" -f "$conf" || die "slurmd did not start; see $state/log/slurmd.log"
  wait_idle
  trap - EXIT
  say "cluster up in $((SECONDS - t0)) s: SLURM_CONF=$conf"
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop   (state in \$LLT_SLURM_STATE, default /tmp/llt-slurm-UID)" >&2
     exit 2 ;;
esac
