"""The layering of the repository, read from the import statements of every module (ast, so
imports inside functions count too):

    concept files (top level)  <-  harness/  <-  experiments/  <-  train.py

A concept file imports only the standard library, torch, torchvision, numpy, matplotlib and
other concept files (so it can be copied alone); harness/ imports no experiments module; and
no project module imports itself through others (no import cycle)."""
import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("harness", "experiments")
THIRD_PARTY = {"torch", "torchvision", "numpy", "matplotlib"}


def project_modules(root):
    """{module name: path} of the top-level .py files and the packages' modules."""
    mods = {f[:-3]: os.path.join(root, f) for f in os.listdir(root) if f.endswith(".py")}
    for pkg in PACKAGES:
        d = os.path.join(root, pkg)
        for f in os.listdir(d) if os.path.isdir(d) else []:
            if f.endswith(".py"):
                name = pkg if f == "__init__.py" else f"{pkg}.{f[:-3]}"
                mods[name] = os.path.join(d, f)
    return mods


def imports(path, module):
    """Every module name an import statement of the file names (`from P import m` gives both
    P and P.m; the caller keeps the project's), relative imports resolved."""
    out = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:                           # from . import x, inside package P.m
                base = ".".join(module.split(".")[:-node.level] + [base]).strip(".")
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def import_graph(root):
    """{module: the project modules it imports} (a dotted name counts as its longest project
    prefix: `import harness.options` -> harness.options)."""
    mods = project_modules(root)
    graph = {}
    for m, path in mods.items():
        deps = set()
        for name in imports(path, m):
            parts = name.split(".")
            for k in range(len(parts), 0, -1):
                if ".".join(parts[:k]) in mods:
                    deps.add(".".join(parts[:k]))
                    break
        graph[m] = deps - {m}
    return graph


def find_cycle(graph):
    """One import cycle [a, b, ..., a] of the graph, or None (depth-first search)."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open":
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = "done"
        return None
    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_concept_files_import_only_the_standard_library_torch_numpy_and_other_concepts():
    mods = project_modules(ROOT)
    concepts = {m for m in mods if "." not in m and m not in PACKAGES and m != "train"}
    allowed = set(sys.stdlib_module_names) | THIRD_PARTY | concepts
    bad = {m: sorted(n for n in imports(mods[m], m) if n.split(".")[0] not in allowed)
           for m in sorted(concepts)}
    assert not {m: b for m, b in bad.items() if b}, "a concept file imports beyond the concepts"


def test_harness_imports_no_experiment():
    graph = import_graph(ROOT)
    bad = {m: sorted(d for d in deps if d.split(".")[0] == "experiments")
           for m, deps in graph.items() if m.split(".")[0] == "harness"}
    assert not {m: b for m, b in bad.items() if b}


def test_no_import_cycle():
    cycle = find_cycle(import_graph(ROOT))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_a_planted_cycle_is_found(tmp_path):
    """The checks above see an import inside a function, through `from P import m`."""
    (tmp_path / "harness").mkdir()
    (tmp_path / "experiments").mkdir()
    (tmp_path / "concept.py").write_text("import torch\nfrom harness import helper\n")
    (tmp_path / "harness" / "helper.py").write_text(
        "def f():\n    from experiments import driver\n")
    (tmp_path / "experiments" / "driver.py").write_text("import concept\n")
    graph = import_graph(str(tmp_path))
    assert find_cycle(graph) == ["concept", "harness.helper", "experiments.driver", "concept"]
    assert graph["harness.helper"] == {"experiments.driver"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
