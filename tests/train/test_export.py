"""Weights out: the sharded model exports to a transformers directory that reloads with the same logits; a run
exports at its end; evaluate scores the export exactly as training did; generate decodes it; the step-0 check
catches weights that were never loaded; push_to_hub offline fails saying what to do."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import ROOT, TINY, compose_cfg, rank_env, read_metrics, run_cli, run_tiny
from cpt.model.tokenizer import ByteTokenizer

FULL = pytest.mark.full  # the full tier (make test-full)


@FULL  # the fast tier exports from one rank (test_run_exports_and_evaluate_...)
def test_two_rank_export_reloads_with_the_same_logits(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "helpers" / "export_probe.py"), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=rank_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    saved = torch.load(tmp_path / "probe.pt")
    hf = tmp_path / "hf"
    expected = {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"}
    assert expected <= {p.name for p in hf.iterdir()}
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    with torch.no_grad():
        logits = model(input_ids=saved["probe"]).logits
    torch.testing.assert_close(logits, saved["logits"], rtol=1e-5, atol=1e-5)
    # the exported tokenizer is the byte tokenizer as a transformers tokenizer: same ids, same EOS
    tok, text = AutoTokenizer.from_pretrained(hf), "Licence — naïve 東京\n\tok"
    assert tok.encode(text, add_special_tokens=False) == ByteTokenizer().encode(text)
    assert tok.eos_token_id == ByteTokenizer.eos_token_id and tok.decode(ByteTokenizer().encode(text)) == text


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-rank run that exports at its end (validation on 8 windows: 2 ranks x 2 batches x 2)."""
    tmp = tmp_path_factory.mktemp("trained")
    return run_tiny(tmp, "run", ["trainer.nproc_per_node=2", "trainer.micro_batch_size=2", "trainer.steps=20",
                                 "optim.warmup_steps=2"])


def test_run_exports_and_evaluate_reproduces_its_validation_loss(trained, tmp_path):
    final = [r for r in read_metrics(trained) if "val_loss" in r][-1]
    out = tmp_path / "eval"
    proc = run_cli(["data=sample", "data.root=${oc.env:CPT_TEST_DATA_ROOT}", f"+models.trained={trained / 'hf'}",
                    "seq_len=32", "max_tokens=256", "num_threads=1", f"out={out}", f"hydra.run.dir={out}"],
                   cwd=tmp_path, module="cpt.evaluate")
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert report["results"]["trained"]["sample"]["tokens"] == 8 * 32
    assert report["results"]["trained"]["sample"]["loss"] == pytest.approx(final["val_loss"], abs=1e-4)
    # bits per byte: the same windows give the same loss over the same bytes (the byte tokenizer: 1 byte per id but
    # the EOS), in training's validation and in evaluate
    assert report["results"]["trained"]["sample"]["bpb"] == pytest.approx(final["val_bpb"], abs=1e-4)
    assert report["results"]["trained"]["sample"]["bytes"] < 8 * 32


@FULL
def test_evaluate_reports_gain_and_forgetting_as_the_run_measured_them(tmp_path):
    """Two sources: `domain` (the sample text, trained on) and `general` (the same paragraphs with their words
    reversed, weight 0: validated, never trained on). Base = an export of the untrained model (1 step at lr 1e-9).
    cpt.evaluate of base vs trained must give, per source, the losses the run itself measured at step 0 and at its
    end, and the change in perplexity exp(final - step 0) - 1: a gain on the domain where it is negative, forgetting
    on general where it is positive."""
    import math

    from cpt.config.schema import to_run_config
    from cpt.data.prepare import prepare

    rows = [json.loads(line) for line in (ROOT / "cpt" / "assets" / "sample.jsonl").read_text().splitlines()]
    (tmp_path / "domain.jsonl").write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows))
    reversed_words = [" ".join(reversed(r["text"].split())) for r in rows]
    (tmp_path / "general.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in reversed_words))
    data = ["data.name=two", f"data.root={tmp_path / 'data'}", "data.val_fraction=0.3",
            f"data.sources=[{{name: domain, paths: [{tmp_path / 'domain.jsonl'}]}}, "
            f"{{name: general, paths: [{tmp_path / 'general.jsonl'}], weight: 0}}]"]
    prepare(to_run_config(compose_cfg(["model=tiny", "data=sample", *data])))
    ranks = ["trainer.nproc_per_node=2", "trainer.micro_batch_size=2"]  # validation: 8 windows of 32 per source
    trained = run_tiny(tmp_path, "run", [*data, *ranks, "trainer.steps=20", "optim.warmup_steps=2"])
    base = run_tiny(tmp_path, "base", [*data, *ranks, "trainer.steps=1", "optim.lr=1e-9"])
    out = tmp_path / "eval"
    proc = run_cli(["data=sample", *data, f"+models.base={base / 'hf'}", f"+models.trained={trained / 'hf'}",
                    "seq_len=32", "max_tokens=256", "num_threads=1", f"out={out}", f"hydra.run.dir={out}"],
                   cwd=tmp_path, module="cpt.evaluate")
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    validations = [r for r in read_metrics(trained) if "val_loss" in r]
    first, last = validations[0], validations[-1]
    assert first["step"] == 0 and report["domain"] == "domain"
    for source, kind_if_up in (("domain", "loss"), ("general", "forgetting")):
        step0, final = first[f"val_loss/{source}"], last[f"val_loss/{source}"]
        assert report["results"]["base"][source]["loss"] == pytest.approx(step0, abs=1e-4)
        assert report["results"]["trained"][source]["loss"] == pytest.approx(final, abs=1e-4)
        change = report["changes"]["trained"][source]
        assert change["ppl_change"] == pytest.approx(math.exp(final - step0) - 1, rel=1e-3, abs=1e-4)
        assert change["kind"] == (kind_if_up if change["ppl_change"] > 0 else "gain")
    assert report["changes"]["trained"]["domain"]["ppl_change"] < -0.1  # training on it did lower it
    table = (out / "report.md").read_text()
    assert "domain (domain)" in table and "| general |" in table and "trained vs base" in table


CLOZE = [("The licensor grants you a worldwide, royalty-free", ["license", "banana split"], 0),
         ("To be, or not to be, that is the", ["question", "answer to it"], 0),
         ("Permission is hereby granted, free of", ["charge", "the cat"], 1),
         ("THE SOFTWARE IS PROVIDED AS IS, WITHOUT WARRANTY OF ANY", ["KIND", "SORT WHATSOEVER"], 0)]


@FULL
def test_evaluate_scores_a_local_harness_task_as_computed_by_hand(trained, tmp_path):
    """`tasks=[...]` runs lm-evaluation-harness on the exported model: a multiple-choice task written here (YAML +
    JSONL, offline) scores every choice's log-likelihood (task_samples) and acc / acc_norm equal to a hand
    computation."""
    import math

    import yaml

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "cloze.jsonl").write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n"
                                               for q, c, a in CLOZE))
    (tasks / "cloze.yaml").write_text(yaml.safe_dump({
        "task": "cpt_test_cloze", "dataset_path": "json", "test_split": "test",
        "dataset_kwargs": {"data_files": {"test": str(tasks / "cloze.jsonl")}}, "output_type": "multiple_choice",
        "doc_to_text": "{{question}}", "doc_to_choice": "{{choices}}", "doc_to_target": "{{answer}}",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}], "metadata": {"version": 1}}))
    out = tmp_path / "eval"
    proc = run_cli(["data=sample", "data.root=${oc.env:CPT_TEST_DATA_ROOT}", f"+models.trained={trained / 'hf'}",
                    "seq_len=32", "max_tokens=256", "num_threads=1", "tasks=[cpt_test_cloze]", f"task_dirs=[{tasks}]",
                    "task_samples=true", f"out={out}", f"hydra.run.dir={out}"], cwd=tmp_path, module="cpt.evaluate")
    assert proc.returncode == 0, proc.stderr[-4000:]
    scores = json.loads((out / "report.json").read_text())["tasks"]["trained"]["cpt_test_cloze"]

    model = AutoModelForCausalLM.from_pretrained(trained / "hf", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(trained / "hf")
    samples = [json.loads(line) for line in
               (out / "task_samples" / "trained" / "cpt_test_cloze.jsonl").read_text().splitlines()]
    assert [s["doc_id"] for s in samples] == list(range(len(CLOZE)))
    acc = acc_norm = 0
    for (question, choices, answer), sample in zip(CLOZE, samples):
        lls = []
        for choice in choices:
            context, whole = tok.encode(question), tok.encode(question + " " + choice)
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([whole[:-1]])).logits[0], -1)
            lls.append(sum(logp[i - 1, whole[i]].item() for i in range(len(context), len(whole))))
        harness = [response[0] for response in sample["responses"]]  # (log-likelihood, is greedy) per choice
        assert harness == pytest.approx(lls, abs=1e-4), (question, harness, lls)
        acc += max(range(len(choices)), key=lambda i: lls[i]) == answer
        acc_norm += max(range(len(choices)), key=lambda i: lls[i] / len(" " + choices[i])) == answer
    assert math.isclose(scores["acc"], acc / len(CLOZE)) and math.isclose(scores["acc_norm"], acc_norm / len(CLOZE))
    assert "cpt_test_cloze" in (out / "report.md").read_text()


def test_generate_greedy_matches_argmax_decoding(trained):
    hf = trained / "hf"
    proc = subprocess.run([sys.executable, "-m", "cpt.generate", str(hf), "--prompt", "The ", "--greedy",
                           "--max-new-tokens", "12", "--repetition-penalty", "1.0"],
                          env=rank_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    ids = ByteTokenizer().encode("The ")
    for _ in range(12):
        with torch.no_grad():
            nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        if nxt == ByteTokenizer.eos_token_id:
            break
        ids.append(nxt)
    expected = ByteTokenizer().decode(ids[len("The "):])
    assert proc.stdout.split("continues\n", 1)[1].rstrip("\n") == expected


@FULL
def test_step0_check_stops_a_pretrained_run_with_random_weights(tmp_path):
    """A 'pretrained' directory that holds random weights must stop the run before the first step."""
    from conftest import compose_cfg
    from cpt.config.schema import to_run_config
    from cpt.model.build import build_model

    fake = tmp_path / "fake-pretrained"
    build_model(to_run_config(compose_cfg(TINY)).model).save_pretrained(fake)
    proc = run_cli([*TINY, f"model.name_or_path={fake}", "model.random_init=false",
                    f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "were not loaded" in proc.stderr and "ln(vocab_size=512)" in proc.stderr
    assert not (tmp_path / "run" / "hf").exists()


def test_push_to_hub_offline_fails_with_what_to_do(tmp_path):
    from cpt.train.export import push

    (tmp_path / "hf").mkdir()
    with pytest.raises(RuntimeError, match="The export itself is complete .* `hf upload user/model "):
        push(tmp_path / "hf", "user/model", private=True)


@FULL
def test_a_slow_export_keeps_no_rank_waiting(tmp_path):
    """Rank 0 writes the export after the process group is closed: with a 25 s export (a slow disk or upload) and
    a 10 s process-group timeout, no rank times out in a collective and the export is complete."""
    env = {**rank_env(), "CPT_FAULT_SLOW_EXPORT": "25", "CPT_FAULT_PG_TIMEOUT": "10"}
    run_dir = tmp_path / "r"
    proc = subprocess.run([sys.executable, "-m", "cpt.run", *TINY, "trainer.nproc_per_node=2",
                           "trainer.micro_batch_size=2", f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert AutoModelForCausalLM.from_pretrained(run_dir / "hf") is not None
