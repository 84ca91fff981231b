"""Vocabulary extension (cpt.model.vocab, model.extend_vocab): the tokens of a list and a file join the BPE tokenizer as
entries with merges, their ids decode to their strings, their embedding rows (and untied lm_head rows) start as the
mean of their old sub-tokens' rows; prepare tokenizes with the extended tokenizer (identity and fertility in the
manifest), training runs, the export saves the extended tokenizer and reloads; evaluate compares the base and the
extended model by bits per byte."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import TINY, compose_cfg, offline_source, run_cli, run_tiny
from cpt.config.schema import ArchConfig, ConfigError, ModelConfig, VocabExtensionConfig, to_run_config
from cpt.data.manifest import DataMismatchError, load_manifest
from cpt.model.build import build_model
from cpt.model.tokenizer import build_tokenizer
from cpt.model.vocab import new_tokens

NEW = [" the", " licens", "café", "東京"]


def test_new_tokens_come_from_the_list_then_the_file(tmp_path):
    f = tmp_path / "tokens.txt"
    f.write_text(" tortfeasor\n\nindemnify\r\n the\n", encoding="utf-8")
    cfg = VocabExtensionConfig(tokens=[" the", "estoppel"], file=str(f))
    # a leading space is kept (BPE words carry it), blank lines and repeats are not
    assert new_tokens(cfg) == [" the", "estoppel", " tortfeasor", "indemnify"]
    with pytest.raises(ConfigError, match="model.extend_vocab.file"):
        new_tokens(VocabExtensionConfig(file=str(tmp_path / "missing.txt")))
    with pytest.raises(ConfigError, match="model.extend_vocab"):
        build_tokenizer(ModelConfig(extend_vocab=VocabExtensionConfig(tokens=["x y"])))  # the byte tokenizer


@pytest.mark.parametrize("tied", [True, False])
def test_new_ids_decode_to_their_strings_and_start_as_subtoken_means(byte_tokenizer_dir, tied):
    model_cfg = ModelConfig(tokenizer=str(byte_tokenizer_dir), extend_vocab=VocabExtensionConfig(NEW + ["a"]),
                            arch=ArchConfig(vocab_size=257, tie_word_embeddings=tied))
    tok = build_tokenizer(model_cfg)
    base_tok = build_tokenizer(model_cfg, extend=False)
    for text in NEW:  # each new token is one id, decodes to its text, and remembers its old pieces
        (new_id,) = tok.encode(text)
        assert new_id >= 257 and tok.decode([new_id]) == text
        assert tok.extension[new_id] == base_tok.encode(text)
    # the partial joins of the pieces (bytes here: no merges) are entries too; "a" is one id already: skipped
    assert sorted(tok.extension) == list(range(257, len(tok))) and len(tok) == 257 + 3 + 6 + 4 + 5
    assert tok.encode("a") == [97]
    torch.manual_seed(0)
    base = build_model(model_cfg)
    torch.manual_seed(0)
    model = build_model(model_cfg, tokenizer=tok)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb.shape[0] == 320 and model.config.vocab_size == 320  # 275 ids, padded to a multiple of 64
    assert (head is emb) == tied
    old_emb, old_head = base.get_input_embeddings().weight, base.get_output_embeddings().weight
    torch.testing.assert_close(emb[:257], old_emb, rtol=0, atol=0)
    for new_id, ids in tok.extension.items():
        torch.testing.assert_close(emb[new_id], old_emb[ids].mean(0), rtol=0, atol=0)
        torch.testing.assert_close(head[new_id], old_head[ids].mean(0), rtol=0, atol=0)
    if not tied:  # lm_head rows are means of lm_head rows, not of embedding rows
        assert not torch.equal(head[257], emb[257])


@pytest.mark.full  # two prepares, two runs and an evaluate
def test_extended_vocab_prepares_trains_exports_and_compares_by_bits_per_byte(byte_tokenizer_dir, tmp_path):
    ext = [f"model.tokenizer={byte_tokenizer_dir}", "model.arch.vocab_size=257",
           f"model.extend_vocab.tokens=[{','.join(repr(t) for t in NEW)}]"]
    root = tmp_path / "data"
    from cpt.data.prepare import prepare

    prepare(to_run_config(compose_cfg(["model=tiny", "data=sample", f"data.root={root}", *ext])))
    manifest = json.loads((root / "sample" / "manifest.json").read_text())
    assert manifest["tokenizer"]["vocab_size"] == 257 + 18
    fertility = manifest["fertility"]
    assert fertility["extended"]["tokens_per_byte"] < fertility["base"]["tokens_per_byte"] == 1.0
    # data prepared with other added tokens is refused by training
    other = to_run_config(compose_cfg([*TINY, f"data.root={root}", *ext[:2], "model.extend_vocab.tokens=[' and']"]))
    with pytest.raises(DataMismatchError, match="tokenized with"):
        load_manifest(other.data, build_tokenizer(other.model))

    run = run_tiny(tmp_path, "ext", [f"data.root={root}", *ext, "trainer.steps=4"])
    tok = AutoTokenizer.from_pretrained(run / "hf")
    assert all(len(ids) == 1 and ids[0] >= 257 for ids in (tok.encode(t, add_special_tokens=False) for t in NEW))
    assert tok.decode(tok.encode("café 東京, the licensee")) == "café 東京, the licensee"
    model = AutoModelForCausalLM.from_pretrained(run / "hf")
    assert model.get_input_embeddings().weight.shape[0] == 320
    base_root = tmp_path / "base_data"  # the base model's own tokenizer
    prepare(to_run_config(compose_cfg(["model=tiny", "data=sample", f"data.root={base_root}", *ext[:2]])))
    base = run_tiny(tmp_path, "base", [f"data.root={base_root}", *ext[:2], "trainer.steps=1", "optim.lr=1e-9"])
    out = tmp_path / "eval"
    proc = run_cli(["data=sample", f"data.root={root}", f"+models.base={base / 'hf'}", f"+models.ext={run / 'hf'}",
                    "seq_len=32", "num_threads=1", f"out={out}", f"hydra.run.dir={out}"], cwd=tmp_path,
                   module="cpt.evaluate")
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert report["compared_by"] == "bpb" and report["tokenized_by_each_model"]
    scored = report["results"]
    assert scored["base"]["sample"]["bytes"] == pytest.approx(scored["ext"]["sample"]["bytes"], rel=0.05)
    assert scored["ext"]["sample"]["tokens"] < scored["base"]["sample"]["tokens"]
    assert "bpb_change" in report["changes"]["ext"]["sample"]


def test_real_bpe_tokenizer_learns_new_merges():
    """SmolLM2's byte-level BPE (merges, a word-splitting pre-tokenizer, special tokens inside the vocabulary), when
    the offline copy is present: a new word becomes one id, in a sentence too; two words cannot."""
    path = offline_source("smollm2-135m")
    cfg = ModelConfig(tokenizer=str(path), extend_vocab=VocabExtensionConfig([" tortfeasor", "New York"]))
    tok, base = build_tokenizer(cfg), build_tokenizer(cfg, extend=False)
    (new_id,) = tok.encode(" tortfeasor")
    assert new_id >= len(base) and tok.extension[new_id] == base.encode(" tortfeasor")
    text = "The joint tortfeasor, of New York."
    assert new_id in tok.encode(text) and tok.decode(tok.encode(text)) == text
    assert tok.encode("New York") == base.encode("New York")  # spans two pre-tokens: skipped
    assert tok.eos_token_id == base.eos_token_id and tok.encode("<|im_end|>") == base.encode("<|im_end|>")


def test_a_join_already_in_the_vocabulary_still_gets_its_merge(tmp_path):
    """Toy BPE: merges (a b), (b c), (a bc), so "abcd" is [ab, c, d] although "abc" is an entry: the extension adds
    the merge (ab c) besides the new entry "abcd" and its merge, and "abcd" becomes one id."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import models
    from transformers import PreTrainedTokenizerFast

    vocab = {"a": 0, "b": 1, "c": 2, "d": 3, "ab": 4, "bc": 5, "abc": 6, "</s>": 7}
    backend = Backend(models.BPE(vocab=vocab, merges=[("a", "b"), ("b", "c"), ("a", "bc")]))
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>").save_pretrained(tmp_path)
    cfg = ModelConfig(tokenizer=str(tmp_path), extend_vocab=VocabExtensionConfig(["abcd"]))
    base, tok = build_tokenizer(cfg, extend=False), build_tokenizer(cfg)
    assert base.encode("abcd") == [4, 2, 3]
    assert tok.encode("abcd") == [8] and tok.extension == {8: [4, 2, 3]} and tok.decode([8]) == "abcd"
    assert tok.encode("abc") == [6] and tok.encode("</s>") == [7]
