"""data: from raw files to the batches a rank trains on. Prepare (`prepare` dispatches; `file_stage` runs the
readers — `convert` dispatches to `pdf`, `compressed`, `columnar`, `html`, `docx`; a Hugging Face dataset source is
resolved by `hf_source` — then `chunk`, `clean`, `split` and `dedup` signatures per file, locally or as a Slurm
array with `slurm_prepare`; `publish` decides, applies each source's `budget`, packs with `pack` and writes
`manifest` + shards, reporting through `prepare_report`), then the training side: `manifest` opens the prepared
shards, `mixture` weighs sources and stages, `loader` yields exact, resumable windows, `provenance` names a window's
documents. May import cpt.common, cpt.assets, cpt.config and cpt.model (tokenizers)."""
