# The few commands people type. `make test` and `make demo` work on a fresh machine:
# they create .venv and install the project with the pinned torch pair first.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo demo-picture lint clean screenshots bench bench-gpu toy toy-ship experiments \
	experiments-efficiency experiments-chain experiments-ddpo

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# Two pytest-xdist workers, whole files to each (a file's module fixtures are built once):
# most slow tests are one-thread CLI subprocesses, so one worker alone leaves a core idle.
# TEST_WORKERS=0 runs every test in one process.
TEST_WORKERS ?= 2
test: install
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

# DRaFT-LV on the toy model shipped in the package (no `make toy` needed): shapes whose prompt
# leaves the colour open become red. Ends with runs/demo/version_N/comparison.png (before/after).
# One thread: on a 2-core machine shared with other work, two threads spin-waiting on each
# other made steps 20x slower (measured); on a quiet machine, DEMO_THREADS=2 is a little faster.
DEMO_THREADS ?= 1
demo: install
	OMP_NUM_THREADS=$(DEMO_THREADS) $(BIN)/lightning fit --config configs/draft_lv.yaml --config configs/demo.yaml

# The README's picture: the demo's before/after PNG, from a fresh demo run.
demo-picture: install
	rm -rf .cache/demo-picture
	OMP_NUM_THREADS=$(DEMO_THREADS) $(BIN)/lightning fit --config configs/draft_lv.yaml \
		--config configs/demo.yaml --trainer.logger.init_args.save_dir .cache/demo-picture
	cp .cache/demo-picture/demo/version_0/comparison.png docs/images/demo_comparison.png

screenshots: install
	$(BIN)/python scripts/tensorboard_screenshot.py

# Not part of `make test`: about 2.5 hours on a 2-core CPU (the paper-scale plans of section 9
# take most of it); creates benchmarks/.venv-trl once (TRL peer, from PyPI) and rewrites
# docs/benchmarks.md, saving each table as it finishes (after a killed run:
# `python -m benchmarks.run_all --only <the missing tables>`). Run it on a quiet machine.
bench: install
	OMP_NUM_THREADS=2 $(BIN)/python -m benchmarks.run_all

# On a machine with one GPU: real-size SD 1.4 at 512 px and SDXL at 1024 px with random
# weights, DRaFT-1 and DRaFT-LV, bf16: s/step and max_memory_allocated against `lightning
# plan`'s prediction, under 10 minutes; rewrites section 8 of docs/benchmarks.md (on a
# machine without one, `make bench` writes there that no GPU measured it).
bench-gpu: install
	$(BIN)/python -m benchmarks.run_all --only gpu

# Not part of `make test`: the pre-registered claims (experiments/preregistration.md) on the
# toy model shipped in the package, 5 seeds each. Several hours on a 2-core CPU in all, so it
# comes in three parts a person can run separately (each resumable: finished runs are cached
# in .cache/experiments, a run cut short resumes from its last step); each rewrites docs/experiments.md and docs/images/experiments/ from
# every cached run, and a claim whose runs are missing names the part to run.
# Measured times per part: docs/experiments.md.
experiments: install
	OMP_NUM_THREADS=2 $(BIN)/python -m experiments.run_all --part all

experiments-efficiency experiments-chain experiments-ddpo: experiments-%: install
	OMP_NUM_THREADS=2 $(BIN)/python -m experiments.run_all --part $*

# Not part of `make test`: about 13 minutes on a quiet 2-core CPU (docs/toy.md). Trains the toy world's attribute
# classifier, its judge and a tiny SD-1.x-style model on it into $DRAFT_LIGHTNING_CACHE
# (default ~/.cache/draft_lightning)/toy-classifier, toy-judge and toy-sd (with quality.json);
# toy:sd then resolves to them instead of the copy shipped in the package.
toy: install
	OMP_NUM_THREADS=2 $(BIN)/python -m draft_lightning.toy.pretrain

# Copies `make toy`'s output into the package (src/draft_lightning/toy/pretrained/: float16
# model weights, MANIFEST.json with sha256 hashes and the commit that trained them).
toy-ship: install
	$(BIN)/python -m draft_lightning.toy.shipped

lint: install
	$(BIN)/ruff check src tests scripts experiments
	$(BIN)/ruff format --check src tests scripts experiments

clean:
	rm -rf $(VENV) .cache runs lightning_logs .pytest_cache .ruff_cache
