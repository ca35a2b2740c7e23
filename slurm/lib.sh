# slurm/lib.sh: the shell logic every sbatch template shares. Sourced, never run. A template calls
#   llt_job_init CONFIG [RUN_NAME]  cd to the repository, make the run folder, split the config,
#                                   load modules, record the job (see slurm/README.md)
#   llt_run TOOL [FLAGS...]         run an llt tool with the config's flags and FLAGS, sample its
#                                   memory, forward SIGUSR1, requeue on exit 75; exits with the
#                                   tool's exit code (never returns). With --ntasks=N > 1 (only
#                                   llt-finetune) srun starts one data-parallel rank per task.
# Environment (all optional): LLT_ROOT (the repository; default the submit folder), LLT_RESULTS
# (default $LLT_ROOT/results), LLT_CONFIG (default slurm/configs/CONFIG.toml), LLT_BIN (native
# tools; default $LLT_ROOT/build/bin), LLT_RUN_DIR (reuse a run folder, e.g. to resume by hand),
# and LLT_<KEY> for each [job] key (LLT_CONTAINER, LLT_MODULES, LLT_BINDS, LLT_SAMPLE_EVERY,
# LLT_MAX_REQUEUES), which wins over the config even when set to "".

llt_die() {
  echo "llt job: error: $*" >&2
  exit 1
}

llt_say() { echo "llt job: $*" >&2; }

# The [job] keys, their defaults and meaning. Any other key in [job] is an error.
declare -A LLT_JOB=(
  [container]=""     # an Apptainer image (.sif): run the tools inside it; "" = native tools
  [modules]=""       # modules to `module load` after `module purge` (space-separated)
  [binds]=""         # extra `apptainer --bind` paths, comma-separated (e.g. /project2,/scratch1)
  [sample-every]=10  # seconds between memory samples (nvidia-smi, RSS)
  [max-requeues]=5   # requeue a pre-empted job at most this many times
)

# Reads a TOML scalar ("string", 'string', number, true/false) with an optional trailing comment.
llt_toml_scalar() {
  local v=$1 basic='^"([^"\\]*)"[[:space:]]*(#.*)?$' literal="^'([^']*)'[[:space:]]*(#.*)?\$"
  local bare='^([A-Za-z0-9.+_-]+)[[:space:]]*(#.*)?$'
  if [[ $v =~ $basic || $v =~ $literal || $v =~ $bare ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
  else
    return 1
  fi
}

# Splits $LLT_CONFIG: the keys before any [table] are the tool's flags and go, verbatim, to
# $LLT_RUN_DIR/tool-config.toml (passed as --config); the [job] table fills LLT_JOB.
llt_read_config() {
  local line n=0 section="" key value tool=$LLT_RUN_DIR/tool-config.toml
  : >"$tool"
  LLT_TOOL_KEYS=0
  while IFS= read -r line || [[ -n $line ]]; do
    n=$((n + 1))
    if [[ $line =~ ^[[:space:]]*\[([^]]*)\][[:space:]]*(#.*)?$ ]]; then
      section=${BASH_REMATCH[1]}
      [[ $section == job ]] || llt_die "$LLT_CONFIG:$n: table [$section]: the templates read" \
        "only [job]; the tool's flags are the flat keys before it"
      continue
    fi
    if [[ -z $section ]]; then
      echo "$line" >>"$tool"
      [[ ! $line =~ ^[[:space:]]*[A-Za-z0-9_-]+[[:space:]]*= ]] || LLT_TOOL_KEYS=$((LLT_TOOL_KEYS + 1))
      continue
    fi
    [[ $line =~ ^[[:space:]]*(#.*)?$ ]] && continue
    [[ $line =~ ^[[:space:]]*([A-Za-z0-9_-]+)[[:space:]]*=[[:space:]]*(.*)$ ]] ||
      llt_die "$LLT_CONFIG:$n: expected 'key = value' in [job], got: $line"
    key=${BASH_REMATCH[1]}
    [[ -v LLT_JOB[$key] ]] || llt_die "$LLT_CONFIG:$n: unknown [job] key '$key'" \
      "(known: ${!LLT_JOB[*]})"
    value=$(llt_toml_scalar "${BASH_REMATCH[2]}") ||
      llt_die "$LLT_CONFIG:$n: [job] $key: expected a string, number or boolean"
    LLT_JOB[$key]=$value
  done <"$LLT_CONFIG"
  # Environment overrides: LLT_SAMPLE_EVERY for sample-every, and so on.
  local var
  for key in "${!LLT_JOB[@]}"; do
    var=LLT_${key//-/_}
    var=${var^^}
    [[ -v $var ]] && LLT_JOB[$key]=${!var}
  done
  [[ ${LLT_JOB[sample-every]} =~ ^[0-9]+$ && ${LLT_JOB[sample-every]} -gt 0 ]] ||
    llt_die "[job] sample-every: expected whole seconds > 0, got '${LLT_JOB[sample-every]}'"
  [[ ${LLT_JOB[max-requeues]} =~ ^[0-9]+$ ]] ||
    llt_die "[job] max-requeues: expected a count, got '${LLT_JOB[max-requeues]}'"
}

llt_load_modules() {
  local mods=${LLT_JOB[modules]} f
  if ! type module >/dev/null 2>&1; then  # batch shells on some clusters lack the function
    for f in /etc/profile.d/lmod.sh /etc/profile.d/modules.sh; do
      # shellcheck source=/dev/null
      if [[ -r $f ]]; then set +u; source "$f"; set -u; break; fi
    done
  fi
  if type module >/dev/null 2>&1; then
    set +u
    module purge
    # shellcheck disable=SC2086
    [[ -z $mods ]] || module load $mods
    set -u
  elif [[ -n $mods ]]; then
    llt_die "[job] modules = '$mods' but this shell has no 'module' command"
  fi
}

# Appends what the scheduler says about this job (once per start: a requeued job starts again).
llt_record_job() {
  local out=$LLT_RUN_DIR/job.txt
  {
    echo "## start $(date -Is) on $(hostname), restart ${SLURM_RESTART_COUNT:-0}," \
      "git $(git -C "$LLT_ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)," \
      "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}"
    if [[ -n ${SLURM_JOB_ID:-} ]]; then
      scontrol show job "$SLURM_JOB_ID" 2>&1 || echo "(scontrol show job failed)"
    else
      echo "(not under SLURM)"
    fi
  } >>"$out"
  local stdout
  stdout=$(sed -n 's/^ *StdOut=//p' "$out" | tail -1)
  [[ -n $stdout ]] && ln -sfn "$stdout" "$LLT_RUN_DIR/slurm.out"
  return 0
}

llt_job_init() {
  local config=$1 name=${2:-$1} tag
  LLT_ROOT=$(cd "${LLT_ROOT:-${SLURM_SUBMIT_DIR:-.}}" && pwd)
  [[ -f $LLT_ROOT/slurm/lib.sh ]] ||
    llt_die "LLT_ROOT=$LLT_ROOT is not the llt repository (submit from its root or set LLT_ROOT)"
  cd "$LLT_ROOT" || llt_die "cannot enter $LLT_ROOT"
  LLT_RESULTS=${LLT_RESULTS:-$LLT_ROOT/results}
  LLT_BIN=${LLT_BIN:-$LLT_ROOT/build/bin}
  LLT_CONFIG=${LLT_CONFIG:-$LLT_ROOT/slurm/configs/$config.toml}
  [[ -f $LLT_CONFIG ]] || llt_die "$LLT_CONFIG: config not found (LLT_CONFIG)"
  if [[ -n ${SLURM_ARRAY_JOB_ID:-} ]]; then
    tag=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}
  elif [[ -n ${SLURM_JOB_ID:-} ]]; then
    tag=$SLURM_JOB_ID
  else
    tag=local-$(date +%Y%m%d-%H%M%S)
  fi
  # The job id survives a requeue, so a requeued job finds its own folder and resumes there.
  LLT_RUN_DIR=${LLT_RUN_DIR:-$LLT_RESULTS/$tag-$name}
  mkdir -p "$LLT_RUN_DIR"
  LLT_RUN_DIR=$(cd "$LLT_RUN_DIR" && pwd)
  export LLT_ROOT LLT_RESULTS LLT_BIN LLT_CONFIG LLT_RUN_DIR
  cp "$LLT_CONFIG" "$LLT_RUN_DIR/sbatch-config.toml"
  llt_read_config
  llt_load_modules
  llt_record_job
  llt_say "run folder $LLT_RUN_DIR (config $LLT_CONFIG)"
}

# "BYTES,PROCESSES" resident in the processes `tops` (space-separated pids) and all their
# descendants, plus the descendants (not themselves) of `daemons` (from /proc; no procps needed).
llt_tree_rss() {
  cat /proc/[0-9]*/stat 2>/dev/null |
    awk -v tops="$1" -v daemons="${2:-}" -v page="$(getconf PAGESIZE)" '
    BEGIN { n = split(tops, t, " "); for (i = 1; i <= n; i++) top[t[i]] = 1
            n = split(daemons, t, " "); for (i = 1; i <= n; i++) daemon[t[i]] = 1 }
    { line = $0; sub(/^.*\) /, "", line); split(line, f, " ")
      parent[$1] = f[2]; rss[$1] = f[22] }  # after "pid (comm) ": state ppid ... rss is 22nd
    END { total = 0; count = 0
          for (p in rss) {
            q = p
            while (q != "" && q > 1 && !(q in top) && !(q in daemon)) q = parent[q]
            if ((q in top) || ((q in daemon) && q != p)) { total += rss[p]; count++ }
          }
          print total * page "," count }'
}

# The pids of this job's step daemons on this node ("slurmstepd: [JOBID.STEP]") for srun's
# steps, not the batch or extern step: srun's tasks (the ranks) are their children, not srun's.
llt_step_daemons() {
  local p comm title re="^slurmstepd: \\[${SLURM_JOB_ID:-none}\\.[0-9]+\\]" out=()
  for p in /proc/[0-9]*; do
    read -r comm 2>/dev/null <"$p/comm" || continue
    [[ $comm == slurmstepd ]] || continue
    title=""
    read -r -d '' title 2>/dev/null <"$p/cmdline" || true
    [[ $title =~ $re ]] && out+=("${p#/proc/}")
  done
  echo "${out[*]}"
}

# Starts the samplers in the background: RSS of the tool's processes (always) and GPU memory
# (when nvidia-smi answers), appended across restarts. Sets LLT_SAMPLERS. rss.csv's processes:
# the tool's process tree; under srun, srun and the ranks on this node (the children of the
# job's step daemons; ranks on other nodes are in sched-memory.txt's sstat only).
llt_start_samplers() {
  local pid=$1 srun=$2 every=${LLT_JOB[sample-every]} rss=$LLT_RUN_DIR/rss.csv
  LLT_SAMPLERS=()
  [[ -s $rss ]] || echo "time_s,rss_bytes,processes" >"$rss"
  (while kill -0 "$pid" 2>/dev/null; do
    if ((srun)); then
      echo "$(date +%s),$(llt_tree_rss "$pid" "$(llt_step_daemons)")"
    else
      echo "$(date +%s),$(llt_tree_rss "$pid")"
    fi
    sleep "$every"
  done) >>"$rss" &
  LLT_SAMPLERS+=($!)
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    local ids=()
    [[ -n ${CUDA_VISIBLE_DEVICES:-} ]] && ids=(--id="$CUDA_VISIBLE_DEVICES")
    nvidia-smi "${ids[@]}" --format=csv,nounits -l "$every" \
      --query-gpu=timestamp,index,name,memory.used,memory.total,utilization.gpu \
      >>"$LLT_RUN_DIR/gpu-memory.csv" 2>&1 &
    LLT_SAMPLERS+=($!)
  fi
}

llt_stop_samplers() {
  local p
  for p in "${LLT_SAMPLERS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${LLT_SAMPLERS[@]}"; do wait "$p" 2>/dev/null || true; done
}

# The scheduler's view of the job's memory, at the end of each start: sstat on the steps still
# running (the batch step holds the tool unless srun ran it), and sacct where accounting storage
# exists (without slurmdbd it says so and fails: recorded, not fatal).
llt_record_scheduler_memory() {
  local rc=$1
  [[ -n ${SLURM_JOB_ID:-} ]] || return 0
  {
    echo "## restart ${SLURM_RESTART_COUNT:-0} ended $(date -Is), exit code $rc"
    echo "## sstat -a -j $SLURM_JOB_ID"
    sstat -a -P -j "$SLURM_JOB_ID" -o JobID,MaxRSS,MaxRSSTask,AveRSS,MaxVMSize 2>&1 ||
      echo "(sstat failed)"
    echo "## sacct -j $SLURM_JOB_ID"
    sacct -P -j "$SLURM_JOB_ID" -o JobID,JobName,State,Elapsed,MaxRSS,ReqMem,AllocTRES 2>&1 ||
      echo "(sacct failed: no accounting storage on this cluster; sstat above is the record)"
  } >>"$LLT_RUN_DIR/sched-memory.txt" 2>&1
}

# SIGUSR1 (sbatch --signal=B:USR1@N, or scancel --signal=USR1 --batch) reaches this shell only:
# pass it on so the tool checkpoints and exits 75.
llt_forward_usr1() {
  LLT_INTERRUPTED=1
  LLT_FORWARDED=1
  llt_say "SIGUSR1 at $(date -Is): asking the tool (pid $LLT_PID) to checkpoint and stop"
  [[ -z $LLT_PID ]] || kill -USR1 "$LLT_PID" 2>/dev/null || true
}

# Waits for the tool; a trapped signal cuts `wait` short, so wait again until it has ended.
llt_wait() {
  local rc again
  while :; do
    LLT_INTERRUPTED=0
    wait "$LLT_PID" && rc=0 || rc=$?
    ((LLT_INTERRUPTED)) || break
    kill -0 "$LLT_PID" 2>/dev/null && continue
    # It ended around the signal: collect its status unless `wait` above already did (127).
    wait "$LLT_PID" && again=0 || again=$?
    ((again == 127)) || rc=$again
    break
  done
  return "$rc"
}

llt_requeue() {
  local restarts=${SLURM_RESTART_COUNT:-0} max=${LLT_JOB[max-requeues]}
  if [[ -z ${SLURM_JOB_ID:-} ]]; then
    llt_say "pre-empted outside SLURM: rerun with LLT_RUN_DIR=$LLT_RUN_DIR to resume"
  elif ((restarts >= max)); then
    llt_say "pre-empted after $restarts requeues (max-requeues): not requeueing again"
  else
    llt_say "requeueing job $SLURM_JOB_ID; its next start resumes in $LLT_RUN_DIR"
    scontrol requeue "$SLURM_JOB_ID" || llt_say "scontrol requeue failed"
  fi
}

llt_run() {
  local tool=$1 cmd=() rc srun=0
  shift
  if [[ -n ${LLT_JOB[container]} ]]; then
    [[ -f ${LLT_JOB[container]} ]] || llt_die "[job] container: ${LLT_JOB[container]} not found"
    command -v apptainer >/dev/null || llt_die "[job] container is set but apptainer is not on" \
      "PATH (add it to [job] modules)"
    cmd=(apptainer exec --nv --bind "$LLT_ROOT,$LLT_RESULTS${LLT_JOB[binds]:+,${LLT_JOB[binds]}}"
      --pwd "$LLT_ROOT" "${LLT_JOB[container]}" "$tool")
  else
    [[ -x $LLT_BIN/$tool ]] || llt_die "$LLT_BIN/$tool: not built (set LLT_BIN, or [job] container)"
    cmd=("$LLT_BIN/$tool")
  fi
  ((LLT_TOOL_KEYS == 0)) || cmd+=(--config "$LLT_RUN_DIR/tool-config.toml")
  cmd+=("$@")
  if ((${SLURM_NTASKS:-1} > 1)); then  # data parallel: one rank per task
    # Only llt-finetune has ranks; N copies of another tool would race on one output.
    [[ $tool == llt-finetune ]] || llt_die "$tool runs as one process: submit it with" \
      "--ntasks=1 (this job has $SLURM_NTASKS tasks; only llt-finetune runs one" \
      "data-parallel rank per task)"
    # llt finds the rendezvous itself: MASTER_ADDR/MASTER_PORT if the environment sets them,
    # else the step's first node and a port from the job id. No --kill-on-bad-exit: the ranks
    # agree on stopping (75, pre-empted) and on out of memory (3), and rank 0 must not be
    # killed while it writes the checkpoint; a rank that fails alone makes the others time out.
    # srun exits with the highest exit code of its tasks, so 75 reaches the requeue below.
    # Since Slurm 22.05 srun does not inherit sbatch's --cpus-per-task: pass it on.
    local srun_flags=()
    [[ -z ${SLURM_CPUS_PER_TASK:-} ]] || srun_flags+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
    cmd=(srun "${srun_flags[@]}" "${cmd[@]}")
    srun=1
  fi
  echo "$(date -Is) restart ${SLURM_RESTART_COUNT:-0}: ${cmd[*]@Q}" >>"$LLT_RUN_DIR/command.txt"
  LLT_FORWARDED=0 LLT_PID=""
  trap llt_forward_usr1 USR1
  "${cmd[@]}" &
  LLT_PID=$!
  llt_start_samplers "$LLT_PID" "$srun"
  llt_wait && rc=0 || rc=$?
  trap - USR1
  llt_stop_samplers
  llt_record_scheduler_memory "$rc"
  llt_say "$tool exited with code $rc"
  # 75: checkpointed and stopped. 138 (killed by USR1) after forwarding it: the signal came
  # before the tool could handle it (still loading); requeue all the same, it resumes or restarts.
  # Only llt-finetune checkpoints: another tool stopped by USR1 just fails (no requeue loop).
  if [[ $tool == llt-finetune ]] && ((rc == 75 || (LLT_FORWARDED && rc == 138))); then
    llt_requeue
  fi
  exit "$rc"
}
