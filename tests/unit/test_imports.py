"""The package reads from the bottom up: stages in layers that only point down, no import circles (counting imports
inside functions too: they hide circles from Python, not from a reader), and no module too long to read in one sitting.
"""

import ast
import os

import cracknet

PACKAGE = os.path.dirname(cracknet.__file__)
# Bottom to top. A module may import its own stage and the stages below it, never one above.
LAYERS = (
    ("core", {"errors", "numbers", "screen", "progress", "config", "version"}),
    ("storage", None),
    ("registry", None),
    ("measure", None),
    ("images", None),
    ("data", None),
    ("model", None),
    ("predict", None),
    ("table", None),
    ("score", None),
    ("review", None),
    ("report", None),
    ("train", None),
    ("demo", None),
    ("commands", {"cli", "console", "__init__"}),
)
MAX_MODULE_LINES = 430
MAX_FUNCTION_LINES = 70  # docstring included: about 60 lines of code


def modules() -> dict[str, str]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for folder, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path[:-3], os.path.dirname(PACKAGE)).replace(os.sep, ".")
                found[dotted.removesuffix(".__init__")] = path
    return found


def dependencies() -> dict[str, set[str]]:
    """Each module's imports of other cracknet modules (a package counts as its ``__init__``)."""
    known = modules()
    graph = {}
    for module, path in known.items():
        found = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cracknet"):
                for alias in node.names:
                    name = f"{node.module}.{alias.name}"
                    found.add(name if name in known else node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("cracknet."))
        graph[module] = {m for m in found if m in known} - {module}
    return graph


def stage_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "commands"
    if len(parts) == 2:
        for stage, members in LAYERS:
            if members is not None and parts[1] in members:
                return stage
    return parts[1]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a stage above the importer's own, as 'importer -> imported'."""
    rank = {stage: i for i, (stage, _) in enumerate(LAYERS)}
    return sorted(f"{module} -> {other}" for module, others in graph.items() for other in others
                  if rank[stage_of(other)] > rank[stage_of(module)])


def test_every_module_belongs_to_a_stage_in_the_layers():
    stages = {stage for stage, _ in LAYERS}
    assert {module: stage_of(module) for module in modules() if stage_of(module) not in stages} == {}


def test_the_package_has_no_import_circles():
    assert circles(dependencies()) == []


def test_stages_import_only_their_own_stage_and_those_below():
    assert upward(dependencies()) == []


def test_the_checks_find_circles_and_upward_imports():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
    assert upward({"cracknet.storage.lease": {"cracknet.score.driver"}, "cracknet.score.driver": {"cracknet.storage"}}) \
        == ["cracknet.storage.lease -> cracknet.score.driver"]
    assert stage_of("cracknet.errors") == "core" and stage_of("cracknet.cli") == "commands"
    assert stage_of("cracknet.storage") == "storage" and stage_of("cracknet.train.epoch") == "train"


def test_the_lowest_modules_import_nothing_above_them():
    graph = dependencies()
    for module in ("cracknet.errors", "cracknet.numbers", "cracknet.screen"):
        assert graph[module] <= {"cracknet.errors"}, (module, graph[module])


def test_every_stage_says_what_it_does_and_every_module_fits_one_sitting():
    for module, path in modules().items():
        text = open(path).read()
        docstring = ast.get_docstring(ast.parse(text))
        assert docstring and len(docstring) > 60, f"{module} has no docstring saying what it is for"
        assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{module} is {len(text.splitlines())} lines long"


def test_no_function_is_longer_than_a_screen_or_so():
    long = []
    for module, path in modules().items():
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert long == []


def test_code_run_in_other_processes_imports_names_that_exist():
    """Scripts handed to ``python -c`` (tests, benchmarks, infra) name cracknet's modules in strings, where a
    move would go unnoticed until that process ran."""
    import glob
    import importlib
    import re

    root = os.path.dirname(PACKAGE)
    missing = []
    for path in [p for pattern in ("tests/**/*.py", "bench/*.py", "infra/**/*.py")
                 for p in glob.glob(os.path.join(root, pattern), recursive=True)]:
        for node in ast.walk(ast.parse(open(path).read())):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            for match in re.finditer(r"from (cracknet[\w.]*) import \(?([\w, ]+)\)?", node.value):
                module = importlib.import_module(match[1])
                for name in (part.strip().split(" as ")[0] for part in match[2].split(",") if part.strip()):
                    if not hasattr(module, name) and f"{match[1]}.{name}" not in modules():
                        missing.append(f"{os.path.relpath(path, root)}: from {match[1]} import {name}")
    assert missing == []
