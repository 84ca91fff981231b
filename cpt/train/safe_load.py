"""Reading a checkpoint never runs code: every file of it is unpickled with an allow-list.

A checkpoint is data that travels between people and clusters, and unpickling can call any function the pickle
names. torch's DCP reader (torch 2.13) unpickles two things without limits: each checkpoint's `.metadata` (plain
`pickle.load` in FileSystemReader.read_metadata) and every non-tensor value of the state dict (`torch.load(...,
weights_only=False)` in DefaultLoadPlanner.load_bytes: the optimizer's param groups). cpt reads checkpoints only
through `load_dcp` (resume, `cpt.export`, `cpt.evaluate` of a checkpoint) and `safe_load` (trainer.pt, rng-*.pt):
  .metadata          a restricted unpickler that resolves only the classes DCP writes there (its metadata dataclasses
                     and enum, torch.Size, dtypes, layouts, paths): a pickle naming anything else is refused before
                     any of it is built
  non-tensor values  torch.load(weights_only=True): tensors and plain Python types
  trainer.pt, rng    torch.load(weights_only=True)
A refused file ends the command with one `error:` line that names it.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem

from cpt.common.errors import UserError

_SAFE_PATHS = {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"}
_DCP_CLASSES = {"Metadata", "StorageMeta", "MetadataIndex", "ChunkStorageMetadata", "TensorProperties",
                "TensorStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING"}


class UnsafeCheckpointError(UserError, RuntimeError):
    """A checkpoint file that could execute code when loaded."""


def _refused(path: Path | str, what: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"{path}: refused to load: it holds {what}, which unpickling could use to run code. cpt never writes such "
        "files: take the checkpoint from a source you trust, or start fresh with resume=none")


class _MetadataUnpickler(pickle.Unpickler):
    """Resolves only what DCP's FileSystemWriter pickles into `.metadata` (checked on cpt's checkpoints: plain,
    LoRA, async, 1 and 2 ranks); any other global is refused before it is looked up."""

    def __init__(self, file, path: Path | str):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch.distributed.checkpoint.metadata" and name in _DCP_CLASSES:
            return getattr(dcp_metadata, name)
        if module == "torch.distributed.checkpoint.filesystem" and name == "_StorageInfo":
            return super().find_class(module, name)
        if module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None), torch.dtype)):
            return getattr(torch, name)
        if module == "torch.serialization" and name == "_get_layout":  # a lookup of a layout by its name
            return super().find_class(module, name)
        if module == "pathlib" and name in _SAFE_PATHS:
            return super().find_class(module, name)
        raise _refused(self.path, f"a reference to {module}.{name} (not a checkpoint metadata type)")


class SafeReader(FileSystemReader):
    """DCP's file reader with `.metadata` read by the restricted unpickler, once: load_dcp reads it before dcp.load
    (so that a refusal is raised as itself), and dcp.load's own read gets the same object back."""

    _read: tuple[Any, Metadata] | None = None  # (metadata path, what it held)

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        if self._read is None or self._read[0] != path:
            with self.fs.create_stream(path, "rb") as f:
                try:
                    metadata = _MetadataUnpickler(f, path).load()
                except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as e:
                    raise UnsafeCheckpointError(
                        f"{path}: not a readable checkpoint metadata file ({e}); the checkpoint is damaged: take "
                        "another one, or start fresh with resume=none") from None
            if not isinstance(metadata, Metadata):
                raise _refused(path, f"a {type(metadata).__name__} instead of DCP metadata")
            if getattr(metadata, "storage_meta", None) is None:  # as FileSystemReader does
                metadata.storage_meta = StorageMeta()
            self._read = (path, metadata)
        metadata = self._read[1]
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafePlanner(DefaultLoadPlanner):
    """DCP's load planner with non-tensor values read as tensors and plain Python types only."""

    def __init__(self, path: Path | str):
        super().__init__()
        self.path = path
        self.refused: UnsafeCheckpointError | None = None

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            self.refused = _refused(self.path, f"a value '{read_item.dest_index.fqn}' that is not a tensor or plain "
                                    f"type ({str(e).splitlines()[0][:160]})")
            raise self.refused from None
        if self.flatten_state_dict:  # where DefaultLoadPlanner.load_bytes puts the value
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def load_dcp(state: dict, path: Path) -> None:
    """dcp.load of `state` (in place) from the checkpoint at `path`, reading nothing that could run code. A refused
    file raises UnsafeCheckpointError on every rank (ranks that did not read it find it among DCP's failures)."""
    reader, planner = SafeReader(str(path)), SafePlanner(path)
    reader.read_metadata()  # a refusal here is raised as is (inside dcp.load it comes wrapped, after DCP's traceback)
    try:
        dcp.load(state, storage_reader=reader, planner=planner)
    except CheckpointException as e:
        refused = planner.refused or _refusal_among(e)
        if refused is None:
            raise
        raise refused from None


def _refusal_among(e: CheckpointException) -> UnsafeCheckpointError | None:
    for exc, _ in e.failures.values():
        if isinstance(exc, UnsafeCheckpointError):
            return exc
        found = re.search(r"\S+: refused to load.*", str(exc), re.S)
        if found:
            return UnsafeCheckpointError(found.group(0))
    return None


def safe_load(path: Path) -> Any:
    """torch.load restricted to tensors and plain types: a checkpoint is data, never code to run."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refused(path, f"objects other than tensors and plain Python types ({str(e).splitlines()[0][:200]})") \
            from None
