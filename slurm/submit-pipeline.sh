#!/usr/bin/env bash
# Submits the whole experiment as one chain of SLURM jobs, each starting only when the one before
# it ended well (--dependency=afterok):
#   prep -> smoke-p100 -> finetune-a100 -> eval and generate (with its adapter)
#                      -> eval-base and generate-base (the base model, no adapter)
#                      -> ablation array (Table 2) -> report (after every task, whatever its end)
#   and report-before-after over eval-base, eval, generate-base and generate once all four have
#   ended (afterany: a folder whose job died before llt wrote anything is left out, with a
#   warning), for llt-report's before/after sheet (base vs fine-tuned).
# Usage: slurm/submit-pipeline.sh [--account NAME] [--cpu-test] [--no-ablation]
#   --account NAME the SLURM account every job is charged to (on CARC your project's,
#                  <group>_<id>); without it SBATCH_ACCOUNT must be set, or nothing is submitted
#                  (CARC would charge the user's default account).
#   --cpu-test     the same templates in their CPU mode, for CI and a local SLURM: the shipped
#                  260K-parameter model and its tokenizer, --device cpu, fp32, 2 optimizer steps,
#                  1 core and 1 GB per job, native tools from $LLT_BIN, no modules or container.
#   --no-ablation  skip the array and its report (the before/after report still runs).
# Environment: LLT_RESULTS (run folders and logs; default results/), LLT_DATA (the tokenized
#   dataset; default data/alpaca-llama2; prep is skipped when it exists), LLT_MODEL (the base
#   model for every job), LLT_ABLATION_ARRAY (default 0-15), SBATCH_ACCOUNT / SBATCH_PARTITION /
#   ... (sbatch's own), and the templates' (slurm/README.md).
# The last line printed is `jobs: prep=ID smoke=ID finetune=ID eval=ID generate=ID base_eval=ID
# base_generate=ID ablation=ID report=ID before_after=ID` (ID "-" where not submitted).
set -euo pipefail
cd "$(dirname "$0")/.."
export LLT_ROOT=$PWD

usage="usage: $0 [--account NAME] [--cpu-test] [--no-ablation]"
cpu_test=0 ablation=1 account=${SBATCH_ACCOUNT:-}
while (($#)); do
  case $1 in
    --account) (($# >= 2)) || { echo "$usage" >&2; exit 1; }; account=$2; shift ;;
    --account=*) account=${1#--account=} ;;
    --cpu-test) cpu_test=1 ;;
    --no-ablation) ablation=0 ;;
    *) echo "$usage" >&2; exit 1 ;;
  esac
  shift
done
if [[ -z $account ]]; then
  echo "submit-pipeline.sh: no account: pass --account NAME or set SBATCH_ACCOUNT (your" \
    "project's account, e.g. <group>_<id>; CARC would charge your default one); nothing submitted" >&2
  exit 1
fi
export SBATCH_ACCOUNT=$account  # sbatch reads it for every job below

export LLT_RESULTS=${LLT_RESULTS:-$LLT_ROOT/results}
mkdir -p "$LLT_RESULTS"
LLT_RESULTS=$(cd "$LLT_RESULTS" && pwd)
data=${LLT_DATA:-data/alpaca-llama2}
array=${LLT_ABLATION_ARRAY:-0-15}

# Flags per kind of job; --cpu-test swaps the GPU setup for the tiny model on the CPU.
sbatch_flags=()
model=()
[[ -z ${LLT_MODEL:-} ]] || model=(--model "$LLT_MODEL")
prep=(--output "$data")
train=(--data "$data/train")
grid=(--data "$data/train")  # the ablation sets precision, LoRA and batching per cell
eval=(--data "$data/eval")
generate=()
if ((cpu_test)); then
  tiny=assets/models/stories260K
  sbatch_flags=(--cpus-per-task=1 --mem=1G)
  export LLT_CONTAINER="" LLT_MODULES="" LLT_SAMPLE_EVERY=1
  model=(--model "$tiny/stories260K.bin" --device cpu)
  prep+=(--tokenizer "$tiny/tok512.model" --split train=0:200 --split eval=200:232)
  train+=(--precision fp32 --base-dtype fp32 --max-steps 2)
  grid+=(--max-steps 2)
  eval+=(--tokenizer "$tiny/tok512.model" --dtype fp32)
  generate+=(--tokenizer "$tiny/tok512.model" --dtype fp32 --max-new-tokens 16)
fi

# sbatch NAME TEMPLATE DEPENDENCY [template arguments]: prints the job id. A NAME other than the
# template's own (eval-base, generate-base, report-before-after) becomes the job's name, and so
# its run folder's (results/<jobid>-<name>/) and log's.
submit() {
  local name=$1 template=$2 dependency=$3 log
  shift 3
  log=$LLT_RESULTS/slurm-%x-%j.out
  [[ $template != ablation.sbatch ]] || log=$LLT_RESULTS/slurm-%x-%A_%a.out
  local flags=("${sbatch_flags[@]}" --parsable --output "$log")
  [[ $name != *-* ]] || flags+=(--job-name="$name")
  [[ -z $dependency ]] || flags+=(--dependency="$dependency")
  [[ $template != ablation.sbatch ]] || flags+=(--array="$array")
  local id
  id=$(sbatch "${flags[@]}" "slurm/$template" "$@") ||
    { echo "sbatch slurm/$template failed" >&2; exit 1; }
  id=${id%%;*}  # --parsable prints id[;cluster]
  echo "submitted $name: job $id${dependency:+ (after $dependency)}" >&2
  echo "$id"
}

ids=(prep=- smoke=- finetune=- eval=- generate=- base_eval=- base_generate=- ablation=- report=-
  before_after=-)
after_prep=""
if [[ -f $data/train/manifest.json && -f $data/eval/manifest.json ]]; then
  echo "dataset $data exists: no prep job" >&2
else
  id=$(submit prep prep.sbatch "" "${prep[@]}")
  ids[0]=prep=$id
  after_prep=afterok:$id
fi
smoke=$(submit smoke smoke-p100.sbatch "$after_prep" "${model[@]}" "${train[@]}")
ids[1]=smoke=$smoke
full=$(submit finetune finetune-a100.sbatch "afterok:$smoke" "${model[@]}" "${train[@]}")
ids[2]=finetune=$full
adapter=(--adapter "$LLT_RESULTS/$full-finetune-a100/adapter")
tuned_eval=$(submit eval eval.sbatch "afterok:$full" "${model[@]}" "${adapter[@]}" "${eval[@]}")
ids[3]=eval=$tuned_eval
gen=$(submit generate generate.sbatch "afterok:$full" \
  "${model[@]}" "${adapter[@]}" "${generate[@]}")
ids[4]=generate=$gen
# The base model, for the before/after sheet: after the smoke test (which loaded it), beside the
# fine-tuning job.
base_eval=$(submit eval-base eval.sbatch "afterok:$smoke" "${model[@]}" "${eval[@]}")
ids[5]=base_eval=$base_eval
base_gen=$(submit generate-base generate.sbatch "afterok:$smoke" "${model[@]}" "${generate[@]}")
ids[6]=base_generate=$base_gen
if ((ablation)); then
  # After the smoke test, so a broken setup costs one small job rather than 16 large ones.
  abl=$(submit ablation ablation.sbatch "afterok:$smoke" "${model[@]}" "${grid[@]}")
  ids[7]=ablation=$abl
  # afterany: out-of-memory cells fail by design (exit 3) and are part of the table.
  ids[8]=report=$(submit report report.sbatch "afterany:$abl" "$LLT_RESULTS/${abl}_*-ablation-*")
fi
# Base before fine-tuned: the sheet's columns follow this order.
ids[9]=before_after=$(submit report-before-after report.sbatch \
  "afterany:$base_eval:$tuned_eval:$base_gen:$gen" "$LLT_RESULTS/$base_eval-eval-base" \
  "$LLT_RESULTS/$tuned_eval-eval" "$LLT_RESULTS/$base_gen-generate-base" \
  "$LLT_RESULTS/$gen-generate")
echo "jobs: ${ids[*]}"
