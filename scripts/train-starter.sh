#!/usr/bin/env bash
# Reproduce the shipped starter weights (avllm/weights/starter-sft, then SFT + DPO in
# avllm/weights/starter): synthetic data (with the recipe's training files), align (which fills the
# feature cache), instruct, subtitles, export, DPO, then the held-out evaluations.
# Prints each stage's wall time. Run from the repo root inside .venv (make starter-weights does both).
set -euo pipefail
export HF_HUB_OFFLINE=1
TRAIN_CLIPS=${TRAIN_CLIPS:-600}
TEST_CLIPS=${TEST_CLIPS:-150}
start=$(date +%s)
stage() {  # stage NAME COMMAND...: run it and print how long it took
  local name=$1 t0; shift; t0=$(date +%s)
  echo "== $name: $*"
  "$@"
  echo "== $name took $(( $(date +%s) - t0 )) s (training so far: $(( $(date +%s) - start )) s)"
}
rm -rf runs/synth runs/starter-align runs/starter-instruct runs/starter-subtitles runs/starter-dpo
# Clips, and the files the recipes read: align.jsonl, instruct-mix.jsonl, dpo-pairs.jsonl.
stage synth-train avllm synth --out runs/synth/train --n "$TRAIN_CLIPS" --seed 1
# The align stage encodes each clip once into the feature cache (instruct reuses it).
stage align avllm train sft --config starter-align
stage instruct avllm train sft --config starter-instruct
# Spoken sentences, transcribed by the starter's Whisper, then the stage that reads subtitles.
stage synth-speech avllm synth --speech --out runs/synth/speech --n 200 --seed 11
stage subtitles avllm train sft --config starter-subtitles
# The SFT weights, in bfloat16 (about 9.7 MB); then DPO from them (scripts/train-dpo.sh, its own
# data included), exported as the default model.
rm -rf avllm/weights/starter-sft
stage export avllm export --model runs/starter-subtitles --out avllm/weights/starter-sft
stage dpo env EXPORT=avllm/weights/starter scripts/train-dpo.sh
echo "== all training stages: $(( $(date +%s) - start )) s"
# Held-out test clips (another seed: no clip is shared with training), then the figures
# (the first 400 items of each file: 399 questions and 300 probes).
stage synth-test avllm synth --out runs/synth/test --n "$TEST_CLIPS" --seed 2
for model in starter avllm/weights/starter-sft avllm/weights/starter; do
  name=$(echo "$model" | tr / -)
  stage "eval-$name" avllm eval --model "$model" --limit 400 \
    --tasks "jsonl:runs/synth/test/qa.jsonl,jsonl:runs/synth/test/probes.jsonl" --out "runs/eval-$name.json"
done
