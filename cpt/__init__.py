"""cpt: continued pretraining of causal language models with Hydra-composed runs and FSDP2.

The package is cut into wings, one folder per concern; each may import only the wings listed before it (checked by
tests/test_architecture.py, drawn in docs/architecture.md):

  common    user errors, per-rank logging, fault injection               (imports nothing of cpt)
  assets    offline corpora and model sources fetched from the registries
  config    the typed schema, its resolvers and cross-field validation
  model     model and tokenizer building, LoRA, vocabulary extension, the loss and document masking
  data      prepare (readers, cleaning, dedup, split, packing, Slurm array) and the training loader
  parallel  process groups, devices, FSDP2/DDP wrapping, how ranks are launched
  eval      held-out loss, bits per byte, gain vs forgetting, harness tasks, sweep reports, generation
  train     the training loop, optimizer, checkpoints, metrics, tracking, export

The commands are the modules at the top (`python -m cpt.<command>`: run, prepare, evaluate, generate, export,
report, corpora, sources): each parses its arguments, calls into the wings and ends the process.
"""

__version__ = "0.1.0"
