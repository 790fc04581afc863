#!/usr/bin/env bash
# SFT + DPO from the shipped SFT weights, in one command (make starter-dpo): synthetic clips of a
# seed no other stage uses, grounding pairs (`avllm data pairs`), the SFT model's own wrong answers
# (`avllm data onpolicy`), DPO (avllm/presets/train/starter-dpo.yaml: its
# reference pass, then training, scoring held-out pairs as it goes), the export, and the curves'
# start and end. It does not retrain the SFT. Prints each stage's wall time.
# Run from the repo root inside .venv. Settings (environment):
#   SFT      the SFT weights to start from (default avllm/weights/starter-sft); copied into the run first,
#            so EXPORT may be the same folder
#   EXPORT   where the SFT + DPO weights go (default runs/starter-dpo-weights)
#   THREADS  torch threads for every stage (default 1: on a CPU shared with other work, 2 threads ran
#            DPO steps 2.5 to 4 times slower than 1; try 2 on an idle host)
#   STEPS    DPO steps of 8 pairs (default: one epoch of the pairs)
#   CLIPS, HELD_OUT, PER_KIND, ASKED: the data's size (below); a smoke run sets them small
set -euo pipefail
export HF_HUB_OFFLINE=1
SFT=${SFT:-avllm/weights/starter-sft}
EXPORT=${EXPORT:-runs/starter-dpo-weights}
THREADS=${THREADS:-1}
export OMP_NUM_THREADS=$THREADS
CLIPS=${CLIPS:-56}        # synthetic clips of seed 3 (seeds 1 and 2 are the SFT's training and test sets)
HELD_OUT=${HELD_OUT:-8}   # of which the last ones give the held-out pairs only
PER_KIND=${PER_KIND:-18}  # training pairs of each of the 8 kinds
ASKED=${ASKED:-32}        # prompts the SFT model answers for its own errors
DATA=runs/dpo
start=$(date +%s)
stage() {  # stage NAME COMMAND...: run it and print how long it took
  local name=$1 t0; shift; t0=$(date +%s)
  echo "== $name: $*"
  "$@"
  echo "== $name took $(( $(date +%s) - t0 )) s (so far: $(( $(date +%s) - start )) s)"
}
rm -rf "$DATA" runs/starter-dpo
mkdir -p "$DATA"
cp -r "$SFT" "$DATA/sft"
stage synth avllm synth --out "$DATA/synth" --n "$CLIPS" --seed 3 --workers "$THREADS"
stage pairs avllm data pairs --synth "$DATA/synth" --out "$DATA/pairs.jsonl" --per-kind "$PER_KIND" \
  --held-out-out "$DATA/held-out.jsonl" --held-out-clips "$HELD_OUT" --held-out-per-kind 3
# The feature cache fills as the next two stages first read each file (onpolicy the clips it asks
# about, the DPO run the rest while it tokenizes the pairs): no model is loaded just for it.
stage onpolicy avllm data onpolicy --model "$DATA/sft" --pairs "$DATA/pairs.jsonl" --out "$DATA/onpolicy.jsonl" \
  --limit "$ASKED" --threads "$THREADS"
cat "$DATA/pairs.jsonl" "$DATA/onpolicy.jsonl" > "$DATA/train.jsonl"
pairs=$(wc -l < "$DATA/train.jsonl")
steps=${STEPS:-$(( pairs / 8 ))}  # one epoch
stage dpo avllm train dpo --config starter-dpo --set model="$DATA/sft" --set max_steps="$steps"
rm -rf "$EXPORT"
stage export avllm export --model runs/starter-dpo --out "$EXPORT"
echo "== from the SFT weights to $EXPORT: $(( $(date +%s) - start )) s"
avllm curves runs/starter-dpo
