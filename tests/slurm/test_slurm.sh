#!/usr/bin/env bash
# The sbatch templates run for real on the private cluster of tests/slurm/harness.sh, in their CPU
# mode with the shipped 260K-parameter model and --device cpu.
#   tests/slurm/test_slurm.sh pipeline  submit-pipeline.sh --cpu-test: prep -> smoke -> finetune
#                                       -> eval + generate (afterok), the base model's eval and
#                                       generate, a 4-task ablation array and the report after
#                                       it, the before/after report; checks every job's folder
#   tests/slurm/test_slurm.sh preempt   SIGUSR1 to a running fine-tuning job (scancel --signal=USR1
#                                       --batch): llt checkpoints and exits 75, the template
#                                       requeues, the job resumes in its folder, and its losses
#                                       equal an uninterrupted run's, bitwise
#   tests/slurm/test_slurm.sh dp        a 2-task data-parallel fine-tuning job through srun:
#                                       the same losses and gradient norms as 1 process
# Prints one PASS/FAIL line per check; exits 0 if all passed, 1 if any failed, 77 (skip) when not
# root or the SLURM packages are missing. Environment (set by CTest): LLT_SLURM_STATE (the
# harness's folder), LLT_BIN (the built tools), LLT_SLURM_WORK (scratch folder).
set -uo pipefail

# The `dp` case: 2 srun tasks, ranks from SLURM's environment, MASTER_PORT from this script's
# environment (sbatch passes it on; slurm/lib.sh sets none). LLT_SLURM_DP_FLAGS: extra
# llt-finetune flags for it.
dp_flags=${LLT_SLURM_DP_FLAGS:-}

root=$(cd "$(dirname "$0")/../.." && pwd)
case_name=${1:-}
[[ $case_name == pipeline || $case_name == preempt || $case_name == dp ]] ||
  { echo "usage: $0 pipeline|preempt|dp" >&2; exit 2; }

if [[ $(id -u) -ne 0 ]]; then echo "SKIPPED: the SLURM tests need root"; exit 77; fi
for c in slurmctld slurmd sbatch munged; do
  command -v "$c" >/dev/null ||
    { echo "SKIPPED: $c not installed (scripts/install-deps.sh installs it)"; exit 77; }
done
state=${LLT_SLURM_STATE:-/tmp/llt-slurm-$(id -u)}
export SLURM_CONF=$state/slurm.conf
if ! [[ -f $SLURM_CONF ]] || ! timeout 10 scontrol ping 2>/dev/null | grep -q 'is UP'; then
  echo "FAIL: no cluster at $SLURM_CONF (tests/slurm/harness.sh start, CTest fixture slurm)"
  exit 1
fi
export LLT_BIN=${LLT_BIN:-$root/build/bin}
work=${LLT_SLURM_WORK:-/tmp/llt-slurm-tests}/$case_name
rm -rf "$work"
mkdir -p "$work/results"
export LLT_RESULTS=$work/results LLT_CONTAINER="" LLT_MODULES="" LLT_SAMPLE_EVERY=1
cd "$root" || exit 1
tiny=assets/models/stories260K
cpu_job=(--cpus-per-task=1 --mem=1G)
cpu_train=(--model "$tiny/stories260K.bin" --device cpu --precision fp32 --base-dtype fp32)

passed=0 failed=0
check() {  # check NAME COMMAND...: one PASS/FAIL line
  local name=$1
  shift
  if "$@" >/dev/null 2>&1; then
    echo "PASS $name"; passed=$((passed + 1))
  else
    echo "FAIL $name"; failed=$((failed + 1))
  fi
}
field() { scontrol show job "$1" 2>/dev/null | grep -o "\b$2=[^ ]*" | head -1 | cut -d= -f2-; }
state_is() { [[ $(field "$1" JobState) == "$2" ]]; }
# Waits until every job (array jobs: every task) has ended; 1 on timeout. Asks scontrol, and
# asks again when it does not answer (a busy controller), rather than take silence for an end.
wait_jobs() {
  local ids=$1 limit=$2 t=$SECONDS id out ended
  local final='JobState=(COMPLETED|FAILED|CANCELLED|TIMEOUT|OUT_OF_MEMORY|NODE_FAIL|DEADLINE) '
  while :; do
    ended=1
    for id in ${ids//,/ }; do
      if ! out=$(scontrol -o show job "$id" 2>/dev/null) || [[ -z $out ]] ||
        grep -qv -E "$final" <<<"$out"; then
        ended=0
        break
      fi
    done
    ((ended)) && return 0
    ((SECONDS - t < limit)) || { echo "timeout: jobs $ids still running after ${limit}s"; return 1; }
    sleep 0.5
  done
}
json_field() {
  /usr/bin/python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$@"
}
status_ok() { [[ $(json_field "$1/summary.json" status) == ok ]]; }
lines() { [[ -f $1 ]] && [[ $(grep -c . "$1") -eq $2 ]]; }
count() { [[ -f $1 ]] && [[ $(grep -c -- "$2" "$1") -eq $3 ]]; }  # FILE PATTERN N
started_after() {  # JOB EARLIER_JOB: JOB started when or after EARLIER_JOB ended
  local s e
  s=$(field "$1" StartTime) e=$(field "$2" EndTime)
  [[ -n $s && -n $e && ! $s < $e ]]
}
# The records every template writes beside the tool's own outputs.
check_records() {
  local name=$1 id=$2 dir=$3
  check "$name: run folder $dir" test -d "$dir"
  check "$name: job.txt has scontrol show job $id" grep -q "JobId=$id " "$dir/job.txt"
  check "$name: rss.csv has samples" \
    awk -F, 'NR > 1 && $2 > 0 && $3 > 0 { n++ } END { exit !n }' "$dir/rss.csv"
  check "$name: sched-memory.txt has sstat MaxRSS of the batch step" \
    awk -F'|' -v step="$id.batch" '$1 == step && $2 + 0 > 0 { n++ } END { exit !n }' \
    "$dir/sched-memory.txt"
  check "$name: slurm.out links to the job's log" test -s "$dir/slurm.out"
}
finish() {
  echo "$case_name: $passed passed, $failed failed in $((SECONDS - start))s (work folder $work)"
  if ((failed)); then
    tail -n 30 "$work"/results/slurm-*.out 2>/dev/null
    exit 1
  fi
  exit 0
}
start=$SECONDS

if [[ $case_name == pipeline ]]; then
  export LLT_DATA=$work/data LLT_ABLATION_ARRAY=0,7,9,14
  # Without an account nothing is submitted (CARC would charge the default one).
  before=$(squeue -h -o %i | wc -l)
  check "submit-pipeline.sh without an account exits 1 naming --account" bash -c \
    'out=$(env -u SBATCH_ACCOUNT slurm/submit-pipeline.sh --cpu-test 2>&1); rc=$?
     ((rc == 1)) && grep -q -- "--account" <<<"$out"'
  check "submit-pipeline.sh without an account submitted nothing" \
    test "$(squeue -h -o %i | wc -l)" = "$before"
  out=$(slurm/submit-pipeline.sh --cpu-test --account llt-test 2>&1)
  echo "$out"
  jobs_line=" $(tail -1 <<<"$out")"
  id() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<<"$jobs_line"; }
  prep=$(id prep) smoke=$(id smoke) full=$(id finetune) evaljob=$(id eval)
  gen=$(id generate) abl=$(id ablation) report=$(id report)
  base_eval=$(id base_eval) base_gen=$(id base_generate) sheet=$(id before_after)
  all="$prep,$smoke,$full,$evaljob,$gen,$base_eval,$base_gen,$abl,$report,$sheet"
  check "submit-pipeline.sh submitted 10 jobs" grep -Eqx '[0-9]+(,[0-9]+){9}' <<<"$all"
  wait_jobs "$all" 240
  r=$LLT_RESULTS

  check "prep: COMPLETED" state_is "$prep" COMPLETED
  check "prep: train and eval splits" \
    test -f "$LLT_DATA/train/manifest.json" -a -f "$LLT_DATA/eval/manifest.json"
  check_records prep "$prep" "$r/$prep-prep"

  d=$r/$smoke-smoke-p100
  check "smoke: COMPLETED" state_is "$smoke" COMPLETED
  check "smoke: on partition gpu" grep -q ' Partition=gpu ' "$d/job.txt"
  check "smoke: charged to the account given" grep -q 'Account=llt-test ' "$d/job.txt"
  check "smoke: asked for gres gpu:p100:1" grep -q 'TresPerNode=gres:gpu:p100:1' "$d/job.txt"
  check "smoke: the 1-layer model" grep -qx 'n-layers=1' "$d/config.toml"
  check "smoke: summary status ok" status_ok "$d"
  check "smoke: 2 steps in metrics.jsonl" lines "$d/metrics.jsonl" 2
  check_records smoke "$smoke" "$d"

  d=$r/$full-finetune-a100
  check "finetune: COMPLETED" state_is "$full" COMPLETED
  check "finetune: asked for gres gpu:a100:1" grep -q 'TresPerNode=gres:gpu:a100:1' "$d/job.txt"
  check "finetune: started after smoke ended (afterok)" started_after "$full" "$smoke"
  check "finetune: all layers (no n-layers)" grep -qx 'n-layers=0' "$d/config.toml"
  check "finetune: summary status ok" status_ok "$d"
  check "finetune: adapter written" test -d "$d/adapter"
  check_records finetune "$full" "$d"

  d=$r/$gen-generate
  check "generate: COMPLETED" state_is "$gen" COMPLETED
  check "generate: started after finetune ended (afterok)" started_after "$gen" "$full"
  check "generate: 4 completions of the seed prompts" lines "$d/generations.jsonl" 4
  check "generate: with the fine-tuned adapter" \
    grep -qF -- "--adapter' '$r/$full-finetune-a100/adapter'" "$d/command.txt"
  check_records generate "$gen" "$d"

  d=$r/$evaljob-eval
  check "eval: COMPLETED" state_is "$evaljob" COMPLETED
  check "eval: started after finetune ended (afterok)" started_after "$evaljob" "$full"
  check "eval: perplexity.json" test -n "$(json_field "$d/perplexity.json" perplexity)"
  check "eval: with the fine-tuned adapter" \
    grep -qF -- "--adapter' '$r/$full-finetune-a100/adapter'" "$d/command.txt"
  check_records eval "$evaljob" "$d"

  # The base model: no adapter, after the smoke test.
  for base in "$base_eval eval-base" "$base_gen generate-base"; do
    job=${base% *} name=${base#* } d=$r/${base// /-}
    check "$name: COMPLETED" state_is "$job" COMPLETED
    check "$name: started after smoke ended (afterok)" started_after "$job" "$smoke"
    check "$name: the base model (no --adapter)" bash -c '! grep -q -- --adapter "$1"' _ \
      "$d/command.txt"
    check_records "$name" "$job" "$d"
  done
  check "eval-base: perplexity.json" \
    test -n "$(json_field "$r/$base_eval-eval-base/perplexity.json" perplexity)"
  check "generate-base: 4 completions of the seed prompts" \
    lines "$r/$base_gen-generate-base/generations.jsonl" 4

  onoff() { if (($1)); then echo on; else echo off; fi; }
  for t in 0 7 9 14; do
    ga=$((t & 1)) mp=$((t >> 1 & 1)) lora=$((t >> 2 & 1)) ckpt=$((t >> 3 & 1))
    cell=ga-$(onoff $ga)_mp-$(onoff $mp)_lora-$(onoff $lora)_ckpt-$(onoff $ckpt)
    d=$r/${abl}_$t-ablation-$cell
    want=("grad-accum=$((ga ? 8 : 1))" "precision=\"$( ((mp)) && echo bf16 || echo fp32)\""
      "lora-rank=$((lora ? 16 : 0))" "grad-checkpoint=\"$( ((ckpt)) && echo block || echo none)\"")
    check "ablation task $t: COMPLETED" state_is "${abl}_$t" COMPLETED
    check "ablation task $t: started after smoke ended (afterok)" started_after "${abl}_$t" "$smoke"
    check "ablation task $t: folder ${abl}_$t-ablation-$cell" test -f "$d/summary.json"
    check "ablation task $t: summary status ok" status_ok "$d"
    check "ablation task $t: ${want[*]}" \
      bash -c 'for w in "${@:2}"; do grep -qxF "$w" "$1" || exit 1; done' _ "$d/config.toml" \
      "${want[@]}"
  done
  check_records "ablation task 7" "$(field "${abl}_7" JobId)" \
    "$r/${abl}_7-ablation-ga-on_mp-on_lora-on_ckpt-off"

  d=$r/$report-report
  after=0
  for t in 0 7 9 14; do started_after "$report" "${abl}_$t" && after=$((after + 1)); done
  check "report: started after every ablation task ended (afterany)" test $after = 4
  check "report: COMPLETED" state_is "$report" COMPLETED
  check "report: over the 4 ablation folders" \
    test "$(grep -o -- "'$r/${abl}_[0-9]*-ablation-[a-z_-]*'" "$d/command.txt" | wc -l)" = 4
  check "report: Table 2 written" test -s "$d/table2.md"

  d=$r/$sheet-report-before-after
  after=0
  for j in "$base_eval" "$evaljob" "$base_gen" "$gen"; do
    started_after "$sheet" "$j" && after=$((after + 1))
  done
  check "before/after: started after the 4 eval and generate jobs ended (afterany)" test $after = 4
  check "before/after: COMPLETED" state_is "$sheet" COMPLETED
  check "before/after: over base and tuned eval and generate, base first" grep -qF -- \
    "'$r/$base_eval-eval-base' '$r/$evaljob-eval' '$r/$base_gen-generate-base' '$r/$gen-generate'" \
    "$d/command.txt"
  check "before/after: perplexity of base and tuned" bash -c \
    'grep -q "^| \`$2-eval-base\` | [0-9]" "$1" && grep -q "^| \`$3-eval\` | [0-9]" "$1"' \
    _ "$d/before_after.md" "$base_eval" "$evaljob"
  check "before/after: the 4 prompts' completions side by side" bash -c \
    '[[ $(grep -c "^| \`$2-generate-base\` | \`$3-generate\` |$" "$1") == 4 ]]' \
    _ "$d/before_after.md" "$base_gen" "$gen"
  finish
fi

"$LLT_BIN/llt-tokenize" --tokenizer "$tiny/tok512.model" --output "$work/data" --threads 1 \
  --split train=0:200 --on-bad-record skip >"$work/tokenize.log" 2>&1 ||
  { cat "$work/tokenize.log"; echo "FAIL tokenize"; exit 1; }
submit_finetune() {  # [sbatch flags] -- [llt flags]: prints the job id
  local sb=()
  while [[ $1 != -- ]]; do sb+=("$1"); shift; done
  shift
  sbatch --parsable "${cpu_job[@]}" "${sb[@]}" -o "$LLT_RESULTS/slurm-%x-%j.out" \
    slurm/finetune-a100.sbatch "${cpu_train[@]}" --data "$work/data/train" "$@"
}

if [[ $case_name == preempt ]]; then
  steps=16
  ref=$(submit_finetune -- --max-steps $steps)
  job=$(submit_finetune -- --max-steps $steps)
  run=$LLT_RESULTS/$job-finetune-a100
  # Signal once llt is training (its handler is installed after the model loads).
  for _ in $(seq 600); do [[ -s $run/metrics.jsonl ]] && break; sleep 0.1; done
  check "preempt: job $job started training" test -s "$run/metrics.jsonl"
  scancel --signal=USR1 --batch "$job"
  # The requeued job waits for a BeginTime SLURM sets about two minutes ahead; cut that short,
  # but not below 3 s: slurmd refuses a start in the second its credential was revoked.
  for _ in $(seq 300); do
    [[ $(field "$job" Restarts) == 1 && $(field "$job" JobState) == PENDING ]] && break
    sleep 0.2
  done
  check "preempt: requeued (Restarts=1, PENDING)" test "$(field "$job" Restarts)" = 1
  scontrol update JobId="$job" StartTime=now+3
  wait_jobs "$ref,$job" 180
  log=$LLT_RESULTS/slurm-finetune-a100-$job.out
  check "preempt: reference run COMPLETED" state_is "$ref" COMPLETED
  check "preempt: requeued run COMPLETED" state_is "$job" COMPLETED
  check "preempt: the template forwarded USR1" grep -q 'SIGUSR1 at' "$log"
  check "preempt: llt checkpointed and exited 75" grep -q 'llt-finetune exited with code 75' "$log"
  stopped=$(sed -n 's/^llt-finetune: preempted after \([0-9]*\) steps.*/\1/p' "$log" | head -1)
  check "preempt: stopped mid-run (after ${stopped:-?} of $steps steps)" \
    test "${stopped:-0}" -ge 1 -a "${stopped:-$steps}" -lt $steps
  check "preempt: the template requeued the job" grep -q "requeueing job $job" "$log"
  check "preempt: the second start resumed in the same folder" \
    grep -q "resumed from $run/checkpoints/step-$stopped" "$log"
  check "preempt: job.txt recorded both starts" count "$run/job.txt" '^## start' 2
  check "preempt: sched-memory.txt recorded the end of the first start (75)" \
    grep -q '^## restart 0 ended .* exit code 75$' "$run/sched-memory.txt"
  check "preempt: sched-memory.txt recorded the end of the second start (0)" \
    grep -q '^## restart 1 ended .* exit code 0$' "$run/sched-memory.txt"
  check "preempt: summary status ok" status_ok "$run"
  losses() {  # "step loss" per line, the loss with all its digits
    /usr/bin/python3 -c 'import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(r["step"], repr(r["loss"]))' "$1"
  }
  check "preempt: $steps steps logged" lines "$run/metrics.jsonl" $steps
  check "preempt: every loss equals the uninterrupted run's, bitwise" \
    diff <(losses "$LLT_RESULTS/$ref-finetune-a100/metrics.jsonl") <(losses "$run/metrics.jsonl")
  echo "last step and loss: uninterrupted $(losses "$LLT_RESULTS/$ref-finetune-a100/metrics.jsonl" |
    tail -1), pre-empted and resumed $(losses "$run/metrics.jsonl" | tail -1)"
  check_records preempt "$job" "$run"
  finish
fi

if [[ $case_name == dp ]]; then
  if [[ ${LLT_WITH_GLOO:-1} == 0 ]]; then
    echo "SKIPPED: this build has no Gloo (CPU data parallelism)"
    exit 77
  fi
  # 2 ranks x 8 micro-batches against 1 process x 16: the same 16 samples per step. A free
  # rendezvous port: other build folders may run this test on their own clusters at once.
  port=$((30000 + RANDOM % 10000))
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
  export MASTER_PORT=$port
  # No LoRA dropout (its masks differ between ranks) and lr 1e-3, so the steps after the first
  # depend on the update; grad_norm catches a wrong gradient scale that AdamW hides from losses.
  exact=(--lora-dropout 0 --lr 1e-3)
  # As finetune-a100.sbatch's header says: N tasks and N GPUs (fake ones here; CUDA sees none).
  # shellcheck disable=SC2086
  job=$(submit_finetune --ntasks=2 --gres=gpu:a100:2 -- --max-steps 3 --grad-accum 8 \
    "${exact[@]}" $dp_flags)
  ref=$(submit_finetune -- --max-steps 3 --grad-accum 16 "${exact[@]}")
  check "dp: the header's other form (--gpus-per-task=a100:1 --gres=none) is accepted" \
    sbatch --test-only "${cpu_job[@]}" --ntasks=2 --gpus-per-task=a100:1 --gres=none \
    slurm/finetune-a100.sbatch
  wait_jobs "$job,$ref" 120
  run=$LLT_RESULTS/$job-finetune-a100
  log=$LLT_RESULTS/slurm-finetune-a100-$job.out
  check "dp: COMPLETED" state_is "$job" COMPLETED
  check "dp: 2 tasks" grep -q 'NumTasks=2 ' "$run/job.txt"
  check "dp: 2 GPUs asked for" grep -q 'TresPerNode=gres:gpu:a100:2' "$run/job.txt"
  check "dp: ranks started by srun with the job's --cpus-per-task, no --kill-on-bad-exit" \
    grep -q "'srun' '--cpus-per-task=1' '$LLT_BIN/llt-finetune'" "$run/command.txt"
  check "dp: rendezvous on MASTER_PORT from the environment" \
    grep -q "rendezvous tcp://[^ ]*:$port," "$log"
  # srun's own RSS is a few MB; counted with the ranks (children of slurmstepd) at least 3.
  check "dp: rss.csv counts srun and both ranks" \
    awk -F, 'NR > 1 && $3 >= 3 { n++ } END { exit !n }' "$run/rss.csv"
  check "dp: summary status ok" status_ok "$run"
  check "dp: world size 2" test "$(json_field "$run/summary.json" world_size)" = 2
  check "dp: 3 steps in metrics.jsonl" lines "$run/metrics.jsonl" 3
  # The sums over micro-batches and ranks associate differently: equal within 1e-5 relative, as
  # tests/test_distributed.cpp measures.
  compare() {
    /usr/bin/python3 - "$1" "$2" <<'PY'
import json, sys
a, b = ([json.loads(l) for l in open(p)] for p in sys.argv[1:])
assert len(a) == len(b) == 3, (len(a), len(b))
for x, y in zip(a, b):
    assert x["label_tokens"] == y["label_tokens"], (x["step"], x["label_tokens"], y["label_tokens"])
    for k in ("loss", "grad_norm"):
        assert abs(x[k] - y[k]) <= 1e-5 * abs(y[k]), (x["step"], k, x[k], y[k])
    print(x["step"], *(f"{k} {abs(x[k] - y[k]) / abs(y[k]):.1e}" for k in ("loss", "grad_norm")))
PY
  }
  check "dp: same samples, losses and grad norms (1e-5) as 1 process with twice the accumulation" \
    compare "$run/metrics.jsonl" "$LLT_RESULTS/$ref-finetune-a100/metrics.jsonl"
  echo "relative differences per step: $(compare "$run/metrics.jsonl" \
    "$LLT_RESULTS/$ref-finetune-a100/metrics.jsonl" 2>&1 | tr '\n' ';')"
  check_records dp "$job" "$run"

  # Pre-empting 2 ranks: srun passes USR1 on, both stop at the same step, rank 0 checkpoints
  # (not killed by srun for the other rank's 75), srun exits 75 and the template requeues.
  steps=12
  job=$(submit_finetune --ntasks=2 -- --max-steps $steps --grad-accum 8 "${exact[@]}")
  run=$LLT_RESULTS/$job-finetune-a100
  log=$LLT_RESULTS/slurm-finetune-a100-$job.out
  for _ in $(seq 600); do [[ -s $run/metrics.jsonl ]] && break; sleep 0.1; done
  scancel --signal=USR1 --batch "$job"
  for _ in $(seq 300); do
    [[ $(field "$job" Restarts) == 1 && $(field "$job" JobState) == PENDING ]] && break
    sleep 0.2
  done
  scontrol update JobId="$job" StartTime=now+3
  wait_jobs "$job" 120
  check "dp pre-empted: srun exited 75" grep -q 'llt-finetune exited with code 75' "$log"
  check "dp pre-empted: the template requeued the job" grep -q "requeueing job $job" "$log"
  stopped=$(sed -n 's/^llt-finetune: preempted after \([0-9]*\) steps.*/\1/p' "$log" | head -1)
  check "dp pre-empted: resumed from rank 0's checkpoint (step ${stopped:-?})" \
    grep -q "resumed from $run/checkpoints/step-${stopped:-x}" "$log"
  check "dp pre-empted: requeued run COMPLETED" state_is "$job" COMPLETED
  check "dp pre-empted: $steps steps logged" lines "$run/metrics.jsonl" $steps
  finish
fi
