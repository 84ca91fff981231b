"""The schema is the one home of defaults and keys: group YAMLs state only what differs from the dataclasses, and
every schema key is read by some code."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml

from conftest import CONF, ROOT
from cpt.config import schema

# the key that names a group's option may repeat the schema default (optim=cosine says `schedule: cosine`); a model
# file states its whole architecture (`arch`), so that changing the tiny default architecture changes no other model
MAY_REPEAT = {"model": ("name", "arch."), "data": ("name",), "fsdp": ("strategy",), "optim": ("schedule",),
              "logger": ("wandb",)}
GROUP_SCHEMA = {"model": schema.ModelConfig, "fsdp": schema.FSDPConfig, "optim": schema.OptimConfig,
                "data": schema.DataConfig, "trainer": schema.TrainerConfig, "logger": schema.LoggerConfig}


def _defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue
        out[f.name] = _defaults(type(value)) if dataclasses.is_dataclass(value) else value
    return out


def _repeated(values: dict, defaults: dict, prefix: str = "") -> list[str]:
    found = []
    for key, value in values.items():
        if key not in defaults:
            continue
        default = defaults[key]
        if isinstance(value, dict) and isinstance(default, dict):
            found += _repeated(value, default, f"{prefix}{key}.")
        elif value == (default.value if hasattr(default, "value") else default):
            found.append(prefix + key)
    return found


@pytest.mark.parametrize("path", sorted(p for g in GROUP_SCHEMA for p in (CONF / g).glob("*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_group_files_state_only_what_differs_from_the_schema(path: Path):
    group = path.parent.name
    values = yaml.safe_load(path.read_text()) or {}
    repeated = [key for key in _repeated(values, _defaults(GROUP_SCHEMA[group]))
                if not key.startswith(MAY_REPEAT.get(group, ()))]
    assert not repeated, f"{path.relative_to(ROOT)} repeats schema defaults {sorted(repeated)}: delete them"


def _schema_fields(cls, prefix: str = "") -> list[tuple[str, type, str]]:
    """(dotted key, owning dataclass, field name) of every field, through nested dataclasses (not into `arch`)."""
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        fields.append((prefix + f.name, cls, f.name))
        nested = [t for t in (hints[f.name], *typing.get_args(hints[f.name])) if dataclasses.is_dataclass(t)]
        if nested and nested[0] is not schema.ArchConfig:
            fields += _schema_fields(nested[0], f"{prefix}{f.name}.")
    return fields


def test_every_schema_key_is_read_by_code():
    """A key no code reads is a lie to the user (`optim.name=sgd` once trained AdamW silently). A field name that
    several dataclasses share (`name`) must be read as `<group>.<name>`, or in a file that names its dataclass."""
    files = {p: p.read_text() for p in (ROOT / "cpt").rglob("*.py")}
    # the schema's field declarations are not reads
    schema_py = ROOT / "cpt" / "config" / "schema.py"
    files[schema_py] = "\n".join(line for line in files[schema_py].splitlines() if not re.match(r"\s+\w+: .*=", line))
    code = "\n".join(files.values())
    assert "vars(arch)" in code  # ArchConfig's fields go to transformers wholesale (model.hf_config)
    fields = _schema_fields(schema.RunConfig) + _schema_fields(schema.EvalConfig)
    owners: dict[str, set] = {}
    for _, cls, name in fields:
        owners.setdefault(name, set()).add(cls)
    unread = set()
    for key, cls, name in fields:
        read = rf"\.{name}\b"
        if len(owners[name]) == 1:
            found = re.search(rf"{read}|[\"']{name}[\"']", code)
        else:
            group = key.rpartition(".")[0].rpartition(".")[2]
            found = (group and re.search(rf"\b({group}|{group.removesuffix('s')}){read}", code)) or any(
                cls.__name__ in text and re.search(read, text) for path, text in files.items()
                if path != schema_py)
        if not found:
            unread.add(key)
    assert not unread, f"schema keys read by no code: {sorted(unread)}"
