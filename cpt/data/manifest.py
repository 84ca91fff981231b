"""The prepared data directory `<data.root>/<data.name>/`: manifest.json (sources, splits, shards, token dtype,
tokenizer identity, fingerprint), report.json, docs/<source>.<split>.jsonl and <source>/<split>/tokens-*.bin.
Training opens it by name and refuses data that is missing or was tokenized by another tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from cpt.common.errors import UserError
from cpt.config.schema import DataConfig
from cpt.model.tokenizer import Tokenizer, identity, same_ids

if TYPE_CHECKING:
    from cpt.data.loader import TokenStream

MANIFEST = "manifest.json"
SPLITS = ("train", "val")


def data_dir(cfg: DataConfig) -> Path:
    return Path(cfg.root).expanduser() / cfg.name


class DataNotPreparedError(UserError, FileNotFoundError):
    """The prepared data a command needs is not there."""


class DataMismatchError(UserError, ValueError):
    """Prepared data that does not fit this run (another tokenizer, other sources)."""


def load_manifest(cfg: DataConfig, tokenizer: Tokenizer) -> dict:
    """The manifest of prepared data that this tokenizer produced and that holds every configured source."""
    manifest = load_manifest_file(cfg)
    want = identity(tokenizer)
    if not same_ids(manifest["tokenizer"], want):
        raise DataMismatchError(
            f"prepared data '{cfg.name}' was tokenized with {manifest['tokenizer']}, but this run's tokenizer is "
            f"{want} (model.tokenizer / model.name_or_path / model.eos_token): prepare it again with this run's "
            "model settings"
        )
    return manifest


def load_manifest_file(cfg: DataConfig) -> dict:
    path = data_dir(cfg) / MANIFEST
    if not path.is_file():
        raise DataNotPreparedError(
            f"no prepared data '{cfg.name}' at {path.parent.resolve()} (data.root / data.name): run "
            f"`python -m cpt.prepare data={cfg.name}` with the same model/tokenizer settings first"
        )
    manifest = json.loads(path.read_text())
    names = [s.name for s in cfg.sources]
    missing = [n for n in names if n not in manifest["sources"]]
    if missing:
        raise DataMismatchError(f"config key 'data.sources': {missing} not in prepared data '{cfg.name}' "
                         f"(it has {sorted(manifest['sources'])}): prepare again")
    return manifest


def open_streams(cfg: DataConfig, manifest: dict, split: str) -> dict[str, TokenStream]:
    from cpt.data.loader import TokenStream  # lazy: imports torch, which prepare does not need

    root = data_dir(cfg)
    streams = {}
    for source in cfg.sources:
        entry = manifest["sources"][source.name][split]
        files = [root / source.name / split / shard["file"] for shard in entry["shards"]]
        streams[source.name] = TokenStream(files, manifest["dtype"])
    return streams
