"""The schema is the one home of defaults and keys: group YAMLs state only what differs from the dataclasses, and
every schema key is read by some code."""

from __future__ import annotations

import ast
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


ROOT_LABEL = "<config>"  # what a RunConfig / EvalConfig is called below


def _labels() -> dict[str, str]:
    """Schema dataclass name -> the label of what holds it: its key's last part (`trainer`, `convert`, `sources`)."""
    labels = {schema.RunConfig.__name__: ROOT_LABEL, schema.EvalConfig.__name__: ROOT_LABEL}
    for key, cls, name in _schema_fields(schema.RunConfig) + _schema_fields(schema.EvalConfig):
        hints = typing.get_type_hints(cls)
        for t in (hints[name], *typing.get_args(hints[name])):
            if dataclasses.is_dataclass(t):
                labels.setdefault(t.__name__, key.rpartition(".")[2])
    return labels


class _Reads(ast.NodeVisitor):
    """Attribute reads `<base>.<name>` of one module, with the base resolved to what it holds: a config attribute
    (`cfg.trainer.compile`: trainer), a name bound to one (`t = cfg.trainer`, `for s in d.sources`, `cfg: DataConfig`,
    `self.cfg = cfg`), or the name itself. Strings and attributes of anything else (`re.compile`) do not count."""

    def __init__(self, labels: dict[str, str]):
        self.labels, self.aliases, self.reads = labels, {}, set()

    def label(self, node) -> set[str]:
        if isinstance(node, ast.Attribute):
            key = f"{ast.unparse(node.value)}.{node.attr}"
            return self.aliases.get(key, set()) | {node.attr}
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, set()) | {node.id}
        if isinstance(node, ast.Subscript):  # d.sources[0]
            return self.label(node.value)
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("enumerate", "zip", "reversed", "sorted"):
            return set().union(*(self.label(a) for a in node.args)) if node.args else set()
        return set()

    def bind(self, target, value_labels: set[str]) -> None:
        if isinstance(target, ast.Name):
            self.aliases.setdefault(target.id, set()).update(value_labels)
        elif isinstance(target, ast.Attribute):
            self.aliases.setdefault(ast.unparse(target), set()).update(value_labels)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:  # `i, s in enumerate(d.sources)` binds both to sources: harmless
                self.bind(element, value_labels)

    def visit_Assign(self, node):
        if isinstance(node.value, ast.Tuple) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Tuple):
            for target, value in zip(node.targets[0].elts, node.value.elts):
                self.bind(target, self.label(value))
        else:
            for target in node.targets:
                self.bind(target, self.label(node.value))
        self.generic_visit(node)

    def visit_AnnAssign(self, node):  # typed: EvalConfig = ...
        self.bind(node.target, {self.labels[n] for n in re.findall(r"\w+", ast.unparse(node.annotation))
                                if n in self.labels} | (self.label(node.value) if node.value else set()))
        self.generic_visit(node)

    def visit_For(self, node):
        self.bind(node.target, self.label(node.iter))
        self.generic_visit(node)

    def visit_comprehension(self, node):
        self.bind(node.target, self.label(node.iter))
        self.generic_visit(node)

    def visit_arg(self, node):
        if node.annotation is not None:
            for name in re.findall(r"\w+", ast.unparse(node.annotation)):
                if name in self.labels:
                    self.aliases.setdefault(node.arg, set()).add(self.labels[name])

    def visit_Attribute(self, node):
        for label in self.label(node.value):
            self.reads.add((label, node.attr))
        self.generic_visit(node)


def _reads() -> set[tuple[str, str]]:
    """(label of the base, attribute) of every attribute read in cpt/, each module walked twice (aliases bound
    further down a module count for reads above them)."""
    reads, labels = set(), _labels()
    for path in sorted((ROOT / "cpt").rglob("*.py")):
        if path == ROOT / "cpt" / "config" / "schema.py":  # the declarations are not reads
            continue
        visitor = _Reads(labels)
        tree = ast.parse(path.read_text())
        visitor.visit(tree)
        visitor.visit(tree)
        reads |= visitor.reads
    return reads


def test_every_schema_key_is_read_by_code():
    """A key no code reads is a lie to the user (`optim.name=sgd` once trained AdamW silently). A read is an
    attribute access on the config object that holds the key (through the names bound to it), found in the AST:
    `trainer.compile` is not read by `re.compile`, nor `weight` by `head.weight`, nor any key by a string."""
    reads = _reads()
    assert (ROOT_LABEL, "arch") in reads or ("model", "arch") in reads  # ArchConfig goes to transformers wholesale
    unread = set()
    for key, _cls, name in _schema_fields(schema.RunConfig) + _schema_fields(schema.EvalConfig):
        parent = key.rpartition(".")[0]
        holder = parent.rpartition(".")[2] if parent else ROOT_LABEL
        names = {holder, holder.removesuffix("s")} | ({"cfg", "config"} if holder == ROOT_LABEL else set())
        if not any((label, name) in reads for label in names):
            unread.add(key)
    assert not unread, f"schema keys read by no code: {sorted(unread)}"
