"""Small defects of issue 16 (item 5), each pinned by a test: sweep batch size on SLURM, the packaged sample asset,
readable numbers in cpt.report, no temporary directory after a failed prepare, the JSONL error wording."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import zipfile

import pytest
from hydra import compose, initialize_config_dir

from conftest import CONF, ROOT, compose_cfg
from cpt.config.schema import SourceConfig, to_run_config


@pytest.mark.parametrize("launcher, batch", [("slurm", None), ("slurm_8gpu", None), ("local", 1)])
def test_lr_sweep_batch_size_follows_the_launcher(launcher, batch):
    """+sweep=lr leaves hydra.sweeper.max_batch_size to conf/config.yaml: all jobs at once on SLURM."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+sweep=lr", f"hydra/launcher={launcher}"],
                      return_hydra_config=True)
    assert cfg.hydra.sweeper.params["optim.lr"] == "1e-5,3e-5,1e-4,3e-4"
    assert cfg.hydra.sweeper.max_batch_size == batch


def test_wheel_ships_the_sample_asset_without_a_packaging_warning(tmp_path):
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT / "cpt", src / "cpt", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                           str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "cpt.assets" not in proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "dist").glob("cpt-*.whl")
    assert "cpt/assets/sample.jsonl" in zipfile.ZipFile(wheel).namelist()


def test_report_shows_numbers_for_people_and_keeps_them_exact_in_the_csv(tmp_path):
    from cpt.eval.sweep_report import report

    job = tmp_path / "sweep" / "0"
    job.mkdir(parents=True)
    (job / "config.yaml").write_text("trainer:\n  steps: 2\n")
    records = [{"step": 1, "loss": 3.123456789, "tokens_per_s": 12053.4164},
               {"step": 2, "loss": 2.987654321, "tokens_per_s": 12053.4164}, {"step": 2, "val_loss": 2.5}]
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    report(tmp_path / "sweep")
    md = (tmp_path / "sweep" / "report.md").read_text()
    assert "| 12,053 |" in md and "| 2.9877 |" in md and "| 2.5000 |" in md and "| 12.18 |" in md  # e^2.5
    assert "12053.4164" not in md
    (row,) = csv.DictReader(open(tmp_path / "sweep" / "report.csv"))
    assert float(row["tokens_per_s"]) == 12053.4164 and float(row["final_loss"]) == 2.987654321


def _prepare_cfg(root, paths, *extra):
    cfg = to_run_config(compose_cfg(["model=tiny", "data.name=t", f"data.root={root}", "data.num_proc=1", *extra]))
    cfg.data.sources = [SourceConfig(name="s", paths=[str(p) for p in paths])]
    return cfg


def test_failed_prepare_leaves_no_temporary_directory(tmp_path, monkeypatch):
    import cpt.data.pack
    import cpt.data.prepare
    from cpt.data.prepare_report import PrepareError

    good = tmp_path / "good.txt"
    good.write_text("A perfectly ordinary paragraph of English text, long enough to pass the length filter. " * 2)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "broken\n')
    out = tmp_path / "out"
    with pytest.raises(PrepareError, match="strict"):
        cpt.data.prepare.prepare(_prepare_cfg(out, [good, bad], "data.strict=true"))
    assert list(out.iterdir()) == []
    cpt.data.prepare.prepare(_prepare_cfg(out, [good]))
    good.write_text(good.read_text() + " Changed.")

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(cpt.data.pack.Packer, "add", boom)  # tokenizing fails
    with pytest.raises(RuntimeError, match="boom"):
        cpt.data.prepare.prepare(_prepare_cfg(out, [good]))
    assert [p.name for p in out.iterdir()] == ["t"] and (out / "t" / "manifest.json").is_file()  # old one intact


def test_jsonl_error_names_the_column_once(tmp_path):
    from cpt.config.schema import ConvertConfig
    from cpt.data.convert import convert_file

    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "ok"}\n{"text": }\n{"text": "broken')  # the last line unterminated
    errors = []
    list(convert_file(path, "jsonl", ConvertConfig(), lambda n, msg: errors.append(msg)))
    assert errors == ["invalid JSON at column 10: Expecting value",
                      "invalid JSON at column 10: Unterminated string starting"]  # not "starting at at column 10"
