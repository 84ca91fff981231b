"""The house: cpt's modules sit in wings whose imports point one way, as docs/architecture.md draws them.

Read from the source with `ast` (every import, at module level or inside a function), so that an import hidden in a
function counts like any other: a cycle between modules fails, a wing importing a later wing or a command fails,
a drawing that misses an edge or shows one the code lacks fails, and an import inside a function must say why it is
lazy (`# lazy: ...`: start-up time of a command that does not need the module, never a cycle)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "cpt"
# the wings in dependency order: each may import only those before it
WINGS = ["common", "assets", "config", "model", "data", "parallel", "eval", "train"]
COMMANDS = {"run", "prepare", "evaluate", "generate", "export", "report", "corpora", "sources"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def wing(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "package"
    return parts[1] if parts[1] in WINGS else "command"


def imports(path: Path, known: dict[str, Path]) -> list[tuple[str, int, bool, bool]]:
    """(imported cpt module, line, inside a function, under `if TYPE_CHECKING`) for every import of cpt."""
    source = path.read_text()
    tree = ast.parse(source)
    found = []

    def visit(node: ast.AST, in_function: bool, typing_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, True, typing_only)
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(child, in_function, True)
                continue
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                # `from cpt.x import y`: the module cpt.x.y when y is a module, else cpt.x
                names = [f"{child.module}.{a.name}" if f"{child.module}.{a.name}" in known else child.module
                         for a in child.names]
            for name in names:
                if name == "cpt" or name.startswith("cpt."):
                    found.append((name, child.lineno, in_function, typing_only))
            visit(child, in_function, typing_only)

    visit(tree, False, False)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {m: {target for target, *_ in imports(p, known)} for m, p in known.items()}


def test_every_module_is_in_a_wing_or_is_a_command():
    stray = [m for m in modules() if wing(m) == "command" and m.split(".")[1] not in COMMANDS]
    assert not stray, f"modules outside the wings that are not commands: {stray}; put each in its wing"
    for name in WINGS:
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text()))
        assert doc and "may import" in doc.lower(), f"cpt/{name}/__init__.py: say what it owns and what it may import"


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if target not in graph:
                continue
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target] if target in path else [module, target]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def wing_edges() -> set[tuple[str, str]]:
    edges = set()
    for module, targets in import_graph().items():
        for target in targets:
            a, b = wing(module), wing(target)
            if a in WINGS and b in WINGS and a != b:
                edges.add((a, b))
    return edges


def test_wings_import_only_earlier_wings_and_no_command():
    known = modules()
    wrong = []
    for module, path in known.items():
        if wing(module) not in WINGS:
            continue
        for target, line, *_ in imports(path, known):
            b = wing(target)
            if b == "command" or (b in WINGS and WINGS.index(b) > WINGS.index(wing(module))):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target} ({wing(module)} -> {b})")
    assert not wrong, "imports against the wings' order " + " > ".join(reversed(WINGS)) + ":\n" + "\n".join(wrong)


def test_commands_do_not_import_each_other():
    known = modules()
    wrong = [f"{module} imports {target}" for module, path in known.items() if wing(module) == "command"
             for target, *_ in imports(path, known) if wing(target) == "command"]
    assert not wrong, wrong


def test_imports_inside_functions_say_why_they_are_lazy():
    known = modules()
    unexplained = []
    for path in known.values():
        lines = path.read_text().splitlines()
        for target, line, in_function, typing_only in imports(path, known):
            if in_function and not typing_only and not any("# lazy:" in lines[i] for i in (line - 2, line - 1)):
                unexplained.append(f"{path.relative_to(ROOT)}:{line} imports {target} inside a function")
    assert not unexplained, ("move these imports to the top of the module, or say with `# lazy: <why>` what start-up "
                             "time they save:\n" + "\n".join(unexplained))


def test_the_drawing_matches_the_imports():
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"```mermaid\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md: the mermaid drawing of the wings is missing"
    drawn = set(re.findall(r"^\s*(\w+)\s*-->\s*(\w+)\s*$", block.group(1), re.M))
    actual = wing_edges()
    assert drawn == actual, (f"docs/architecture.md draws {sorted(drawn - actual)} that no import makes and misses "
                             f"{sorted(actual - drawn)}")
