# Set-up and the main job. `make demo` and `make test` work on a fresh machine:
# they create the virtual environment and install everything they need.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUN    := runs/demo-$(shell date +%Y%m%d-%H%M%S)
PROMPTS := 秋天的落叶 明月 春风

.PHONY: install demo test bench clean

$(BIN)/aigc: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0   # the CPU build; pyproject asks only for a range
	$(BIN)/pip install -q -e .
	touch $@

install: $(BIN)/aigc

# Train a GPT on the embedded Tang poems for about five minutes, then write four poems per prompt.
demo: install
	$(BIN)/aigc train configs/tang-poems-gpt.toml --train.out_dir=$(RUN)
	@seed=0; for p in $(PROMPTS); do \
		echo; echo "=== $$p"; \
		$(BIN)/aigc sample $(RUN) --prompt $$p --n 4 --seed $$seed || exit 1; \
		seed=$$((seed + 100)); \
	done
	@echo; echo "run folder: $(RUN) (loss curves in $(RUN)/loss.png)"

test: install
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/python -m pytest -q

clean:
	rm -rf prepared runs .pytest_cache
