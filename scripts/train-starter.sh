#!/usr/bin/env bash
# Reproduce the shipped starter weights (weights/starter): synthetic data, feature cache,
# align, instruct, export, DPO, then the held-out evaluations. Prints each stage's wall time.
# Run from the repo root inside .venv (make starter-weights does both).
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
rm -rf runs/synth runs/starter-align runs/starter-instruct runs/starter-dpo
stage synth-train avllm synth --out runs/synth/train --n "$TRAIN_CLIPS" --seed 1
# --model starter: the preset the align stage starts from, so the same encoder settings and the
# same cache entries (the default, weights/starter, may hold other settings).
stage features avllm features --model starter --data runs/synth/train/instructions.jsonl
# The align stage reads the multiple-choice records alone: one short answer each, about one
# picture or sound fact, which is what the projectors must learn to carry.
python3 - <<'PY'
import json
lines = open("runs/synth/train/instructions.jsonl").read().splitlines()
keep = [l for l in lines if json.loads(l)["style"] == "choice"]
open("runs/synth/train/align.jsonl", "w").write("\n".join(keep) + "\n")
print(f"align.jsonl: {len(keep)} of {len(lines)} records")
PY
stage align avllm train sft --config configs/train/starter-align.yaml
# The instruct stage reads the sessions (written by avllm synth: every multiple-choice question
# about a clip in one chat, so the clip's 68 tokens are paid once per seven answers; its three
# sessions open with a yes/no probe, the description and a plain question) and the open
# chats (a description in sentences, then follow-ups without options), which keep free-form
# questions answered in sentences rather than single words.
python3 - <<'PY'
import json
sessions = open("runs/synth/train/sessions.jsonl").read().splitlines()
chats = [l for l in open("runs/synth/train/instructions.jsonl").read().splitlines() if json.loads(l)["style"] == "open"]
open("runs/synth/train/instruct-mix.jsonl", "w").write("\n".join(sessions + chats) + "\n")
print(f"instruct-mix.jsonl: {len(sessions)} sessions and {len(chats)} open chats")
PY
stage instruct avllm train sft --config configs/train/starter-instruct.yaml
# What ships: the SFT weights alone, in bfloat16 (about 9.7 MB). The DPO stage below is run and
# evaluated but not shipped (docs/experiments.md).
rm -rf weights/starter
stage export avllm export --model runs/starter-instruct --out weights/starter
# DPO pairs, one epoch of the DPO stage (60 steps of 8; the reference pass covers every pair, so
# the file holds no more than training sees): a third of the hallucination pairs (a false "Yes, a
# dog is barking" against a grounded "No, ..."), as many omissions (a false "No" about what is
# there against a grounded "Yes, ..."), and a few pairs about content (a wrong colour, count or
# sound), which keep the answers about what is there from drifting.
python3 - <<'PY'
import json
lines = open("runs/synth/train/preferences.jsonl").read().splitlines()
by_target = {}
for line in lines:
    by_target.setdefault(json.loads(line)["target"], []).append(line)
other = [l for t, ls in by_target.items() if t not in ("hallucination", "omission") for l in ls]
keep = by_target["hallucination"][::3] + by_target["omission"][::3] + other[::15]
open("runs/synth/train/dpo-pairs.jsonl", "w").write("\n".join(keep) + "\n")
print(f"dpo-pairs.jsonl: {len(keep)} of {len(lines)} pairs")
PY
stage dpo avllm train dpo --config configs/train/starter-dpo.yaml
echo "== all training stages: $(( $(date +%s) - start )) s"
# Held-out test clips (another seed: no clip is shared with training), then the figures
# (the first 400 items of each file: 399 questions and 300 probes).
stage synth-test avllm synth --out runs/synth/test --n "$TEST_CLIPS" --seed 2
for model in starter weights/starter runs/starter-dpo; do
  name=$(echo "$model" | tr / -)
  stage "eval-$name" avllm eval --model "$model" --limit 400 \
    --tasks "jsonl:runs/synth/test/qa.jsonl,jsonl:runs/synth/test/probes.jsonl" --out "runs/eval-$name.json"
done
