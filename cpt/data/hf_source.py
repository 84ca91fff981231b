"""A source that is a Hugging Face dataset (`data.sources[].hf`): which data files it reads, in what format, and its
identity for prepare's fingerprint.

`datasets` resolves the dataset as `load_dataset` would — a hub id (owner/name) at a revision, a local directory in
the hub's layout (data/train-00000-of-00002.parquet ..., a README with configs), its configuration (`name`) and
split — into data files. Local files are then read by cpt's own streaming readers (Parquet by row groups, so a big
file is shared by several workers, cpt.data.file_stage); files on the hub are streamed by `datasets`
(`read_remote`), so only what prepare reads is downloaded, and a budget (max_docs / max_tokens) that is full stops
the reading. A `save_to_disk` directory is one unit, read by cpt.data.columnar.

The identity: the path, configuration, split and data files with their sizes and modification times (local) or
with the commit in their URL (hub: `hf://datasets/<id>@<sha>/...`), so new data at the same path prepares again and
unchanged data is reused. Offline, a hub id fails with one line saying how to use a local copy."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from cpt.common.errors import UserError
from cpt.config.schema import HFDatasetConfig
from cpt.data.columnar import DATASET_STATE
from cpt.data.read_errors import FileError, OnRecordError

# datasets' packaged builders -> cpt's format names
_FORMATS = {"parquet": "parquet", "arrow": "arrow", "json": "jsonl", "csv": "csv", "text": "text"}


@dataclass(frozen=True)
class DatasetFiles:
    files: list[str]  # local paths, or remote URLs (hf://...)
    format: str
    identity: dict


def is_remote(file: str) -> bool:
    return "://" in file


def resolve(hf: HFDatasetConfig, key: str) -> DatasetFiles:
    """The data files of `hf` (`key` names it in errors: data.sources[i].hf)."""
    local = Path(hf.path).expanduser()
    if (local / DATASET_STATE).is_file():  # save_to_disk: one unit, its arrow files in state.json's order
        files = [str(local)]
        return DatasetFiles(files, "arrow", {"save_to_disk": _stats(sorted(local.glob("*.arrow")))})
    builder = _builder(hf, key, local)
    module = type(builder).__module__.split(".")
    fmt = _FORMATS.get(module[-1]) if "packaged_modules" in module else None
    if fmt is None:
        raise UserError(f"{key}.path '{hf.path}': a dataset built by a loading script ({type(builder).__name__}), "
                        "which cpt does not run; use one published as data files (Parquet, JSON Lines, CSV, text, "
                        "Arrow) or convert it once with `datasets` and save_to_disk, then point hf.path there")
    splits = builder.config.data_files or {}
    if hf.split not in splits:
        raise UserError(f"{key}.split '{hf.split}': the dataset '{hf.path}'"
                        f"{f' ({hf.name})' if hf.name else ''} has the splits {sorted(splits)}")
    files = [str(f) for f in splits[hf.split]]
    remote = [f for f in files if is_remote(f)]
    identity = {"path": hf.path, "name": hf.name, "split": hf.split, "revision": hf.revision,
                "files": remote + _stats([Path(f) for f in files if not is_remote(f)])}
    if hf.shuffle_seed is not None:
        random.Random(hf.shuffle_seed).shuffle(files)
    return DatasetFiles(files, fmt, identity)


def _stats(paths: list[Path]) -> list:
    return [(str(p), stat.st_size, stat.st_mtime_ns) for p in paths for stat in [p.stat()]]


def _builder(hf: HFDatasetConfig, key: str, local: Path):
    import datasets  # lazy: 1 s to import, for hf sources only
    from datasets import DownloadConfig

    offline = (f"{key}.path '{hf.path}': the Hugging Face Hub cannot be reached (%s). Download the dataset where "
               f"there is network — `hf download --repo-type dataset {hf.path}"
               f"{f' --revision {hf.revision}' if hf.revision else ''} --local-dir <dir>` (only the files of the split "
               "you use: add --include 'data/train-*') — and set hf.path=<dir>")
    if not local.is_dir():
        problem = _hub_unreachable()
        if problem:  # at once, not after huggingface_hub's minute of retries
            raise UserError(offline % problem)
    try:
        return datasets.load_dataset_builder(str(local) if local.is_dir() else hf.path, hf.name,
                                             data_files=list(hf.data_files) or None, revision=hf.revision,
                                             download_config=DownloadConfig(max_retries=1))
    except ConnectionError as e:
        raise UserError(offline % type(e).__name__) from None
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"{key}: {' '.join(str(e).split())}") from None
    except Exception as e:  # datasets' own errors (DatasetNotFoundError, DataFilesNotFoundError, ...)
        if type(e).__module__.startswith(("datasets", "huggingface_hub")):
            raise UserError(f"{key}.path '{hf.path}': {type(e).__name__}: {' '.join(str(e).split())}") from None
        raise


def _hub_unreachable() -> Optional[str]:
    """Why the hub (HF_ENDPOINT) cannot be reached, or None: offline mode, or its host does not resolve."""
    from huggingface_hub import constants  # lazy: with datasets

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE=1"
    host = urlparse(constants.ENDPOINT).hostname or ""
    try:
        socket.getaddrinfo(host, 443)
    except OSError as e:
        return f"{host}: {e.strerror or e}"
    return None


def read_remote(url: str, fmt: str, text_field: str, on_record_error: OnRecordError) -> Iterator[dict]:
    """Records of one data file on the hub, streamed by `datasets` (only what is read is downloaded): the text at
    `text_field`, the other scalar columns as "fields", the row number; a row without string text is reported."""
    import datasets  # lazy: hf sources only

    rows = datasets.load_dataset({"jsonl": "json"}.get(fmt, fmt), data_files=[url], split="train", streaming=True)
    try:
        for number, row in enumerate(rows, 1):
            text = row.get(text_field)
            if not isinstance(text, str):
                on_record_error(number, f"no string text at '{text_field}' (got {type(text).__name__}; the columns: "
                                        f"{sorted(row)[:20]}; set the source's text_field)")
                continue
            fields = {k: v for k, v in row.items() if k != text_field and isinstance(v, (str, int, float, bool))}
            yield {"text": text, "row": number, "fields": fields}
    except (OSError, ValueError) as e:  # the connection, or a damaged file
        raise FileError(Path(url.split("://", 1)[1]), f"cannot read from the hub: {' '.join(str(e).split())}") from e
