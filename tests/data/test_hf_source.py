"""A source that is a Hugging Face dataset (cpt.data.hf_source): a local directory in the hub's layout resolved by
`datasets` as a hub dataset would be, a save_to_disk directory, a row filter, budgets that take exactly the first
N documents / at most N tokens (and stop reading), the fingerprint following the data files, one clear line
offline, and the hub reader (`datasets` streaming) on a file."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import compose_cfg, rank_env
from cpt.common.errors import UserError
from cpt.config.schema import HFDatasetConfig, to_run_config
from cpt.data.hf_source import read_remote, resolve
from cpt.data.prepare import prepare
from cpt.data.publish import make_plan

WORDS = "contract party notice term clause court appeal statute liability remedy".split()


def row_text(file: int, row: int) -> str:
    rng = np.random.default_rng(file * 1000 + row)
    return f"Document {file}-{row}: " + " ".join(rng.choice(WORDS, 30 + row % 7)) + "."


def hub_layout(root, files=2, rows=12):
    """A dataset directory as it sits on the hub: data/<split>-0000i-of-0000n.parquet, several row groups each."""
    (root / "data").mkdir(parents=True)
    for f in range(files):
        table = pa.table({"text": [row_text(f, r) for r in range(rows)], "score": [r % 4 for r in range(rows)],
                          "lang": ["en" if r % 3 else "fr" for r in range(rows)]})
        pq.write_table(table, root / "data" / f"train-{f:05d}-of-{files:05d}.parquet", row_group_size=4)
    pq.write_table(pa.table({"text": ["held out"], "score": [0], "lang": ["en"]}),
                   root / "data" / "validation-00000-of-00001.parquet")
    return root


def cfg_for(tmp_path, hf: str, *extra, source=""):
    return to_run_config(compose_cfg(["model=tiny", "data=sample", f"data.root={tmp_path / 'out'}",
                                      "data.name=hub", "data.val_fraction=0.2", "data.dedup.near=false",
                                      f"data.sources=[{{name: web, hf: {hf}{source}}}]", *extra]))


def kept_docs(out):
    return [json.loads(line) for split in ("train", "val") for line in open(out / "docs" / f"web.{split}.jsonl")]


def test_a_local_hub_layout_dataset_is_its_split_in_order_with_a_row_filter(tmp_path):
    ds = hub_layout(tmp_path / "ds")
    resolved = resolve(HFDatasetConfig(path=str(ds)), "k")
    assert resolved.format == "parquet" and [f.rsplit("/", 1)[1] for f in resolved.files] == [
        "train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]  # the train split only, as datasets sees it
    out = prepare(cfg_for(tmp_path, f"{{path: '{ds}'}}", source=", where: {column: score, min: 2}"))
    docs = kept_docs(out)
    expected = {row_text(f, r) for f in range(2) for r in range(12) if r % 4 >= 2}
    assert {d["text"] for d in docs} == expected and all(d["fields"]["score"] >= 2 for d in docs)
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["dropped"]["web"]["filtered_out"] == 12  # the 12 rows with score 0 or 1, counted
    with pytest.raises(UserError, match="has the splits"):
        resolve(HFDatasetConfig(path=str(ds), split="test"), "data.sources[0].hf")


def test_equals_filters_as_text_and_a_save_to_disk_directory_is_a_source(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": [row_text(9, r) for r in range(10)],
                                "lang": ["en", "fr"] * 5}).save_to_disk(str(tmp_path / "saved"))
    out = prepare(cfg_for(tmp_path, f"{{path: '{tmp_path / 'saved'}'}}", source=", where: {column: lang, equals: EN}"))
    assert sorted(d["text"] for d in kept_docs(out)) == sorted(row_text(9, r) for r in range(0, 10, 2))


def test_max_docs_takes_exactly_the_first_documents_and_stops_reading(tmp_path):
    ds = hub_layout(tmp_path / "ds", files=3)
    out = prepare(cfg_for(tmp_path, f"{{path: '{ds}'}}", "data.sources.0.max_docs=7", "data.num_proc=1"))
    docs = kept_docs(out)
    assert sorted(d["id"] for d in docs) == sorted(f"web:train-00000-of-00003.parquet#{r}" for r in range(7))
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(manifest["sources"]["web"][s]["docs"] for s in ("train", "val")) == 7
    report = json.loads((out / "report.json").read_text())
    assert len(report["files"]) == 1  # full within the first file: the other two were never read (with more workers:
    # never more than those in flight)
    assert "budget reached: 7 documents" in report["summary"]["notes"]["web"]


def test_max_tokens_takes_whole_documents_up_to_the_budget(tmp_path):
    ds = hub_layout(tmp_path / "ds")
    full = prepare(cfg_for(tmp_path, f"{{path: '{ds}'}}", "data.name=all"))
    order = [json.loads(line) for line in open(full / "docs" / "web.train.jsonl")]
    order += [json.loads(line) for line in open(full / "docs" / "web.val.jsonl")]
    order.sort(key=lambda d: (d["path"], d["row"]))
    sizes = [len(d["text"].encode()) + 1 for d in order]  # the byte tokenizer: one id per byte, + EOS
    budget = sum(sizes[:9]) + sizes[9] // 2  # ends inside the 10th document
    out = prepare(cfg_for(tmp_path, f"{{path: '{ds}'}}", f"data.sources.0.max_tokens={budget}"))
    manifest = json.loads((out / "manifest.json").read_text())
    tokens = sum(manifest["sources"]["web"][s]["tokens"] for s in ("train", "val"))
    assert tokens == sum(sizes[:9]) <= budget < tokens + sizes[9]  # whole documents: the first 9
    assert sorted(d["id"] for d in kept_docs(out)) == sorted(d["id"] for d in order[:9])


def test_the_fingerprint_follows_the_data_files(tmp_path):
    ds = hub_layout(tmp_path / "ds")
    cfg = cfg_for(tmp_path, f"{{path: '{ds}'}}")
    prepare(cfg)
    assert make_plan(cfg).up_to_date  # unchanged data: reused
    first = make_plan(cfg).fingerprint
    assert make_plan(cfg_for(tmp_path, f"{{path: '{ds}'}}", "data.sources.0.max_docs=3")).fingerprint != first
    table = pa.table({"text": ["new text, new data"] * 3, "score": [1] * 3, "lang": ["en"] * 3})
    pq.write_table(table, ds / "data" / "train-00001-of-00002.parquet")
    assert make_plan(cfg).fingerprint != first and not make_plan(cfg).up_to_date


def test_a_hub_id_offline_fails_at_once_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cpt.prepare", "model=tiny", "data=sample",
                           f"data.root={tmp_path}", "data.sources=[{name: web, hf: {path: HuggingFaceFW/fineweb-edu, "
                           "name: sample-10BT}, max_tokens: 1000}]"], cwd=tmp_path,
                          env={**rank_env(), "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=120)
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(error) == 1, proc.stderr[-2000:]
    assert "data.sources[0].hf.path 'HuggingFaceFW/fineweb-edu'" in error[0] and "hf.path=<dir>" in error[0]
    assert "hf download --repo-type dataset HuggingFaceFW/fineweb-edu" in error[0] and "HF_HUB_OFFLINE=1" in error[0]


def test_the_hub_reader_streams_a_file_through_datasets(tmp_path):
    path = tmp_path / "part.parquet"
    pq.write_table(pa.table({"text": ["one", None, "three"], "n": [1, 2, 3]}), path)
    errors = []
    records = list(read_remote(str(path), "parquet", "text", lambda n, m: errors.append((n, m))))
    assert [(r["text"], r["row"], r["fields"]) for r in records] == [("one", 1, {"n": 1}), ("three", 3, {"n": 3})]
    assert errors and errors[0][0] == 2 and "text_field" in errors[0][1]


def test_a_source_names_paths_or_hf(tmp_path):
    with pytest.raises(UserError, match=r"data.sources\[0\]"):
        make_plan(to_run_config(compose_cfg(["model=tiny", "data=sample", "data.sources=[{name: web}]"])))
