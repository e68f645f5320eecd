"""The rooms' import rules (docs/design.md, "Where code lives"), proven in fresh processes, and no import cycle."""
import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "pipeline"

# room -> (modules that may break the rule, heavy modules its import must not load)
RULES = {
    "inputs": ((), ("tensorflow", "keras")),
    "model": (("handler",), ("apache_beam", "tensorflow", "keras")),
    "store": ((), ("apache_beam", "tensorflow", "keras", "pandas")),
    "job": ((), ("tensorflow", "keras")),
}


def modules(room: str) -> list[str]:
    return sorted(f"pipeline.{room}.{path.stem}" for path in (PACKAGE / room).glob("*.py") if path.stem != "__init__")


@pytest.mark.parametrize("room", sorted(RULES))
def test_importing_a_room_loads_none_of_its_forbidden_libraries(room):
    exempt, forbidden = RULES[room]
    names = [name for name in modules(room) if name.rsplit(".", 1)[1] not in exempt]
    script = (f"import sys\nfor name in {names!r}:\n    __import__(name)\n"
              f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(forbidden)!r}))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", f"importing pipeline.{room} loaded {done.stdout.strip()}"


def test_the_package_and_its_command_line_load_nothing_heavy():
    script = ("import sys, pipeline, pipeline.cli, pipeline.images, pipeline.files, pipeline.errors, pipeline.processes\n"
              "print(sorted({m.split('.')[0] for m in sys.modules} & {'apache_beam', 'tensorflow', 'keras', 'pandas'}))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]


def _imports(path: pathlib.Path) -> set[str]:
    """Every pipeline module a file imports, at its top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if _module_path(candidate) else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "pipeline")
    return {name for name in found if _module_path(name)}


def _module_path(name: str) -> pathlib.Path | None:
    base = PACKAGE.parent.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def test_no_import_cycle():
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = _imports(path) - {name}
    # A package's __init__ that re-exports lazily is not an edge back into its modules.
    cycles = []

    def visit(node, stack, seen):
        for child in sorted(graph.get(node, ())):
            if child in stack:
                cycles.append(stack[stack.index(child):] + [child])
            elif child not in seen:
                seen.add(child)
                visit(child, stack + [child], seen)

    for start in sorted(graph):
        visit(start, [start], {start})
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])
