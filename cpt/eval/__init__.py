"""eval: measuring models — held-out loss over exact windows (`heldout`, also training's validation), bits per
byte (`bits_per_byte`), scoring models with different tokenizers on the same documents (`retokenize`), harness tasks
(`tasks`), domain gain vs forgetting and the Pareto front (`pareto`), side-by-side evaluation (`compare`), a run's
summary (`run_summary`), a sweep's report (`sweep_report`), the base model's step-0 validation shared by a sweep's
jobs (`base_validation`) and text generation (`generate`). May import every wing listed before it (common, assets,
config, model, data, parallel); the training loop imports eval, never the other way."""
