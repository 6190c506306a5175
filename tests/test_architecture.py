"""The shape of the package: no import cycles, layers that import only downwards, small modules.

The import graph comes from grimp (the graph behind import-linter), built from the source
without the imports inside ``if TYPE_CHECKING:`` blocks. Imports inside functions *are*
counted: a lazy import that goes back up is still a two-way coupling, it only hides from
``import promptfit``. docs/concepts/architecture.md draws the same layers.

Exceptions are listed by name with the reason. The ones marked "issue 12" are couplings that
other parts of issue 12 remove; when one disappears, the test fails and asks to delete its
exception, so the lists never outlive what they excuse.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import grimp
import pytest

import promptfit

PACKAGE_DIR = Path(promptfit.__file__).parent

# Bottom to top; a module may import only modules of its own layer or of layers below. A module
# belongs to the layer of the longest prefix that names it. Package ``__init__`` modules are
# facades that re-export their children, so they take the highest layer they import (see
# _layer_of). Why this order and not "data -> variables -> language_models -> modules ->
# programs -> training -> optimizers/callbacks -> observability" (issue 12's first sketch):
# Program subclasses Trainer, so training sits below programs (as Keras' Model subclasses its
# Trainer); the fit loop dispatches to CallbackList, so callbacks sit below training (no
# callback imports the loop); observability's span hook is called by every LM call and module
# call, so it sits at the bottom, while MLflow's helpers serve Monitor (a callback), and only
# enable_observability, which registers the default Monitor, sits on top.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("promptfit._version", "promptfit.errors")),
    ("data", ("promptfit.data", "promptfit.datasets")),
    ("variables", ("promptfit.variables",)),
    ("tracing hook", ("promptfit.observability.spans",)),
    ("language models", ("promptfit.language_models",)),
    ("file helpers", ("promptfit.saving",)),
    ("tracking backend", ("promptfit.observability",)),
    ("program files", ("promptfit.saving.program_io",)),
    ("rewards", ("promptfit.rewards",)),
    ("metrics", ("promptfit.metrics",)),
    ("modules", ("promptfit.modules",)),
    ("checkpoint manifest", ("promptfit.checkpoints",)),
    # What a run *is* (resumable counters, the typed context every callback receives, batch
    # outcomes): written by the loop, read by callbacks, so below both.
    (
        "run state",
        ("promptfit.training.state", "promptfit.training.context", "promptfit.training.outcome"),
    ),
    ("callbacks", ("promptfit.callbacks",)),
    ("training loop", ("promptfit.training",)),
    ("programs", ("promptfit.programs",)),
    ("optimizers", ("promptfit.optimizers",)),
    (
        "entry points",
        ("promptfit", "promptfit.observability.enable", "promptfit.cli", "promptfit.testing"),
    ),
)

# (importer, imported) -> why the upward import is allowed for now. None today; a new one is
# listed here with its reason and the issue that removes it, never silently.
KNOWN_UPWARD_IMPORTS: dict[tuple[str, str], str] = {}

# Import cycles (as sets of modules) allowed for now. None today; when a merge brings one back,
# list it here with the issue that breaks it, never silently.
KNOWN_CYCLES: dict[frozenset[str], str] = {}

MAX_LINES = 500
WHY_LONG = "Why this module is long:"
# Oversized modules waiting for a split (module path -> the issue that splits it). Empty since
# issue 12's splits (Monitor's uploader, ProgramCheckpoint's retention, the fake server package,
# the fit loop) landed; a module that must stay long says why in its docstring instead.
KNOWN_LONG_MODULES: dict[str, str] = {}


@functools.cache
def _graph() -> grimp.ImportGraph:
    return grimp.build_graph("promptfit", exclude_type_checking_imports=True, cache_dir=None)


@functools.cache
def _edges() -> dict[str, frozenset[str]]:
    graph = _graph()
    return {m: frozenset(graph.find_modules_directly_imported_by(m)) for m in graph.modules}


def _source_modules() -> set[str]:
    names = set()
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _cycles(edges: dict[str, frozenset[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _own_layer(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for layer, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if _within(module, prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), layer)
    return None if best is None else best[1]


@functools.cache
def _layer_of(module: str) -> int:
    """A module's layer; a package ``__init__`` that re-exports takes the highest layer of
    what it imports (its own children only), so ``import promptfit.checkpoints`` counts as
    importing the manifest, not as importing everything the root package pulls in."""
    own = _own_layer(module)
    assert own is not None, f"{module} is in no layer; add it to LAYERS in {__file__}."
    if not _graph().find_children(module):
        return own
    children = [m for m in _edges()[module] if m.startswith(module + ".")]
    return max([own, *(_layer_of(child) for child in children)])


def _why(importer: str, imported: str) -> str:
    details = _graph().get_import_details(importer=importer, imported=imported)
    return "; ".join(f"line {d['line_number']}: {d['line_contents']}" for d in details)


def test_the_graph_is_the_source_under_test() -> None:
    """grimp finds packages on sys.path: make sure it read the promptfit this run imports."""
    assert set(_graph().modules) == _source_modules()


def test_no_import_cycles() -> None:
    cycles = _cycles(_edges())
    unexpected = [sorted(c) for c in cycles if c not in KNOWN_CYCLES]
    assert not unexpected, (
        "Import cycles (outside TYPE_CHECKING; lazy imports count): "
        + "; ".join(
            " <-> ".join(c)
            + " ("
            + ", ".join(
                f"{a} -> {b} [{_why(a, b)}]" for a in c for b in sorted(_edges()[a]) if b in c
            )
            + ")"
            for c in unexpected
        )
        + ". Break the cycle (move the shared piece down a layer, or register a factory), "
        "or list it in KNOWN_CYCLES with the issue that breaks it."
    )
    stale = [sorted(c) for c in KNOWN_CYCLES if c not in cycles]
    assert not stale, f"These known cycles are gone; delete them from KNOWN_CYCLES: {stale}"


def test_layers_import_only_downwards() -> None:
    violations = []
    seen_exceptions = set()
    for importer, imported_modules in sorted(_edges().items()):
        for imported in sorted(imported_modules):
            if _layer_of(imported) <= _layer_of(importer):
                continue
            if (importer, imported) in KNOWN_UPWARD_IMPORTS:
                seen_exceptions.add((importer, imported))
                continue
            violations.append(
                f"{importer} ({LAYERS[_layer_of(importer)][0]}) imports {imported} "
                f"({LAYERS[_layer_of(imported)][0]}) [{_why(importer, imported)}]"
            )
    assert not violations, (
        "Upward imports (layers, bottom to top: "
        + " -> ".join(name for name, _ in LAYERS)
        + "):\n"
        + "\n".join(violations)
    )
    stale = sorted(set(KNOWN_UPWARD_IMPORTS) - seen_exceptions)
    assert not stale, (
        f"These upward imports are gone; delete them from KNOWN_UPWARD_IMPORTS: {stale}"
    )


def test_training_imports_neither_history_progbar_nor_observability() -> None:
    """The loop asks CallbackList for its default callbacks (issue 12, item 2)."""
    edges = _edges()
    training = [
        m for m in edges if m == "promptfit.training" or m.startswith("promptfit.training.")
    ]
    forbidden = ("promptfit.callbacks.history", "promptfit.callbacks.progbar_logger")
    found = [
        f"{m} -> {i}"
        for m in training
        for i in edges[m]
        if i in forbidden
        or i == "promptfit.observability"
        or i.startswith("promptfit.observability.")
    ]
    assert not found, found


def _module_docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""


def test_no_module_is_over_500_lines_without_saying_why() -> None:
    too_long = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        relative = path.relative_to(PACKAGE_DIR.parent).as_posix()
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines <= MAX_LINES or relative in KNOWN_LONG_MODULES:
            continue
        if any(line.strip().startswith(WHY_LONG) for line in _module_docstring(path).splitlines()):
            continue
        too_long.append(f"{relative} ({lines} lines)")
    assert not too_long, (
        f"Modules over {MAX_LINES} lines: {too_long}. Split them, or add a line starting "
        f"{WHY_LONG!r} to the module docstring with the reason."
    )


def test_known_long_modules_are_still_long() -> None:
    """A split that landed must also delete its exception."""
    stale = []
    for relative in KNOWN_LONG_MODULES:
        path = PACKAGE_DIR.parent / relative
        if not path.exists() or len(path.read_text(encoding="utf-8").splitlines()) <= MAX_LINES:
            stale.append(relative)
    assert not stale, f"Delete these from KNOWN_LONG_MODULES (now split or short): {stale}"


@pytest.mark.parametrize(
    ("module", "layer"),
    [
        ("promptfit.observability.spans", "tracing hook"),
        ("promptfit.observability.tracking", "tracking backend"),
        ("promptfit.observability.enable", "entry points"),
        ("promptfit.saving.program_io", "program files"),
        ("promptfit.checkpoints", "checkpoint manifest"),
        ("promptfit", "entry points"),
    ],
)
def test_layer_assignment(module: str, layer: str) -> None:
    """The longest prefix wins, and a package facade takes the layer of what it re-exports."""
    assert LAYERS[_layer_of(module)][0] == layer
