# The few commands people type. `make test` and `make demo` work on a fresh machine:
# they create .venv and install the project with the pinned torch pair first.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo lint clean screenshots bench bench-gpu toy experiments

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

test: install
	$(BIN)/pytest

demo: install
	$(BIN)/lightning fit --config configs/draft_lv.yaml --config configs/cpu_tiny.yaml

screenshots: install
	$(BIN)/python scripts/tensorboard_screenshot.py

# Not part of `make test`: about 10 minutes on a 2-core CPU; creates benchmarks/.venv-trl
# once (TRL peer, from PyPI) and rewrites docs/benchmarks.md. Run it on a quiet machine.
bench: install
	OMP_NUM_THREADS=2 $(BIN)/python -m benchmarks.run_all

# On a machine with one GPU (not part of `make bench`): real-size SD 1.4 at 512 px and SDXL at
# 1024 px with random weights, DRaFT-1 and DRaFT-LV, bf16: s/step and max_memory_allocated
# against `lightning plan`'s prediction; under 10 minutes. Prints a markdown table.
bench-gpu: install
	$(BIN)/python -m benchmarks.bench_gpu

# Not part of `make test`: the paper's findings on the toy world (needs `make toy` first);
# about 105 minutes alone on a 2-core CPU, resumable (finished runs are cached in
# .cache/experiments). Rewrites docs/experiments.md and docs/images/experiments/. A longer
# DDPO run on one seed is opt-in: add `--ddpo-long-batches 256` to the command below.
experiments: install
	OMP_NUM_THREADS=2 $(BIN)/python -m experiments.run_all

# Not part of `make test`: about 11 minutes on a quiet 2-core CPU. Trains the toy world's attribute
# classifier and a tiny SD-1.x-style model on it into $DRAFT_LIGHTNING_CACHE (default
# ~/.cache/draft_lightning)/toy-classifier and toy-sd (with quality.json); configs/toy.yaml
# fine-tunes that model.
toy: install
	OMP_NUM_THREADS=2 $(BIN)/python -m draft_lightning.toy.pretrain

lint: install
	$(BIN)/ruff check src tests scripts experiments
	$(BIN)/ruff format --check src tests scripts experiments

clean:
	rm -rf $(VENV) .cache runs lightning_logs .pytest_cache .ruff_cache
