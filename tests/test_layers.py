"""The import rule of DESIGN.md §1, executable.

Every module under anonmail/ is parsed with `ast` (nothing is imported) and must

1. be placed in exactly one layer of LAYERS below (a new module fails until it is placed);
2. import only anonmail modules of its own layer or a lower one (type-only imports count too:
   the rule is about what a layer knows, not about import-time cost). Every form counts, at
   any depth (in functions too): `import`, `from`, `importlib.import_module` and `__import__`,
   however renamed; one whose module is not a string literal cannot be checked, so it is itself
   a violation;
3. import `nacl` only in anonmail.crypto and `cbor2` only in anonmail.wire (tests and the
   threat-model checks too: they go through crypto and wire like everyone else);
4. outside the edges, the entry point, rng.py, clock.py, sim/ and experiments/, not read ambient
   time or randomness (`time.time`, `os.urandom`, `random`, `secrets`, `datetime.now`, ...):
   take a `Clock` and an `Rng`, so the same code runs under MockClock, reproducibly.
"""

from __future__ import annotations

import ast
import contextlib
import fnmatch
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import pytest

# ---------------------------------------------------------------------------------------------
# The layer table, lowest first. A module may import modules of its own layer and of the layers
# above it in this list. Patterns are fnmatch-style over dotted module names.

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("anonmail.errors", "anonmail.rng", "anonmail.clock",
              "anonmail.fileio")),  # fileio: atomic 0600 files, no anonmail imports
    # wire_scan: the pre-scan that bounds decode cost (cbor2-free, so the benchmark may build
    # hostile input with it).
    ("wire", ("anonmail.wire", "anonmail.wire.*", "anonmail.wire_scan", "anonmail.wire_schema",
              "anonmail.wire_flat")),
    # crypto sits above wire so that the key file (crypto/keyfile.py) can encode its record.
    ("crypto", ("anonmail.crypto", "anonmail.crypto.*")),
    ("records", ("anonmail.records", "anonmail.records.*")),
    ("net", ("anonmail.net", "anonmail.net.*")),
    ("dht", ("anonmail.dht", "anonmail.dht.*")),
    ("store", ("anonmail.store", "anonmail.store.*")),
    ("permit", ("anonmail.permit", "anonmail.permit.*")),
    ("anon", ("anonmail.anon", "anonmail.anon.*")),
    ("mail", ("anonmail.mail", "anonmail.mail.*")),
    ("node", ("anonmail.node", "anonmail.node.*", "anonmail.agent", "anonmail.agent.*")),
    ("edges", ("anonmail", "anonmail.config", "anonmail.paths", "anonmail.control",
               "anonmail.commands", "anonmail.commands.*", "anonmail.gateway",
               "anonmail.gateway.*")),
    ("sim", ("anonmail.sim", "anonmail.sim.*")),
    ("experiments", ("anonmail.experiments", "anonmail.experiments.*")),
    # The command line assembles every layer's commands: on top, each named statically.
    ("entry", ("anonmail.cli", "anonmail.__main__")),
]

# Third-party packages only one module may import.
EXCLUSIVE = {"nacl": "anonmail.crypto", "cbor2": "anonmail.wire"}

# Layers and modules that may read the real clock and the OS randomness.
AMBIENT_OK_LAYERS = {"edges", "sim", "experiments", "entry"}
AMBIENT_OK_MODULES = {"anonmail.rng", "anonmail.clock"}
AMBIENT_MODULES = {"random", "secrets"}
AMBIENT_NAMES = {
    "time.time", "time.time_ns", "time.monotonic", "time.monotonic_ns",
    "os.urandom", "os.getrandom", "uuid.uuid1", "uuid.uuid4",
    "datetime.datetime.now", "datetime.datetime.utcnow", "datetime.datetime.today",
    "datetime.date.today",
}

ROOT = Path(__file__).resolve().parent.parent
LAYER_INDEX = {name: i for i, (name, _) in enumerate(LAYERS)}


def layer_of(module: str) -> str | None:
    hits = [name for name, patterns in LAYERS
            if any(fnmatch.fnmatchcase(module, p) for p in patterns)]
    assert len(hits) <= 1, f"{module} matches layers {hits}: fix the table"
    return hits[0] if hits else None


# ---------------------------------------------------------------------------------------------
# Reading modules


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted((root / "anonmail").rglob("*.py"))}


@dataclass(frozen=True)
class Import:
    module: str  # the dotted module (or module.attribute) imported; if dynamic, the source text
    line: int
    dynamic: bool = False  # the module is not named by a literal: it cannot be checked


# What `importlib.import_module` and `__import__` are called through, however imported.
IMPORT_FUNCTIONS = {"importlib.import_module", "importlib.__import__", "builtins.__import__"}


def imports_of(source: str, module: str, is_package: bool, known: set[str]) -> list[Import]:
    """Every import in `source`, resolved to absolute dotted names. `from a import b` (and
    `__import__("a", fromlist=["b"])`) counts as importing `a.b` when that is a module in `known`,
    else as importing `a`. An import call whose module is not a literal, or an import function
    referenced without being called, is returned with `dynamic=True`."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    out: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend(Import(alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.append(Import(full if full in known else base, node.lineno))
    aliases, called = _aliases(tree), set[int]()
    for node in ast.walk(tree):  # breadth first: a call comes before the function it calls
        if isinstance(node, ast.Call) and _is_import_function(node.func, aliases):
            called.add(id(node.func))
            is_dunder = (_dotted(node.func, aliases) or "__import__").endswith("__import__")
            out.extend(_dynamic_import(node, is_dunder, module, package, known))
        elif (isinstance(node, ast.Name | ast.Attribute) and isinstance(node.ctx, ast.Load)
                and id(node) not in called and _is_import_function(node, aliases)):
            out.append(Import(ast.unparse(node), node.lineno, dynamic=True))
    return out


def _is_import_function(node: ast.expr, aliases: dict[str, str]) -> bool:
    if isinstance(node, ast.Name) and node.id not in aliases:
        return node.id == "__import__"  # the builtin
    return _dotted(node, aliases) in IMPORT_FUNCTIONS


def _dynamic_import(call: ast.Call, is_dunder: bool, module: str, package: str,
                    known: set[str]) -> list[Import]:
    """What a call of `__import__` (`is_dunder`) or `import_module` imports: literals only."""
    def lit(index: int, keyword: str) -> object:
        arg = call.args[index] if len(call.args) > index else next(
            (k.value for k in call.keywords if k.arg == keyword), None)
        return _literal(arg, module, package)

    name = lit(0, "name")
    level, items, relative_to = (  # __import__(name, globals, locals, fromlist, level)
        (lit(4, "level") or 0, lit(3, "fromlist") or (), package) if is_dunder
        else (0, (), lit(1, "package")))  # import_module(name, package)
    full = ""
    if (isinstance(name, str) and isinstance(level, int) and isinstance(relative_to, str | None)
            and not any(isinstance(a, ast.Starred) for a in call.args)
            and all(k.arg for k in call.keywords)):
        # a relative name without a package, or reaching above it, stays unresolved
        with contextlib.suppress(ImportError, ValueError):
            full = importlib.util.resolve_name("." * level + name, relative_to)
    if not full or not isinstance(items, tuple) or not all(isinstance(i, str) for i in items):
        return [Import(ast.unparse(call)[:80], call.lineno, dynamic=True)]
    subs = [f"{full}.{i}" if f"{full}.{i}" in known else full for i in items]
    return [Import(m, call.lineno) for m in subs or [full]]


_UNKNOWN = object()


def _literal(node: ast.expr | None, module: str, package: str) -> object:
    """A str / int / None literal, list or tuple of them, `__name__`, `__package__`; or _UNKNOWN."""
    if node is None:
        return None
    if isinstance(node, ast.Name) and node.id in ("__name__", "__package__"):
        return module if node.id == "__name__" else package
    if isinstance(node, ast.List | ast.Tuple):
        return tuple(_literal(e, module, package) for e in node.elts)
    if isinstance(node, ast.Constant) and isinstance(node.value, str | int | None):
        return node.value
    return _UNKNOWN


def ambient_uses(source: str) -> list[tuple[str, int]]:
    """Uses of ambient time or randomness: imports of `random` / `secrets`, and any reference
    (call or not) to a name in AMBIENT_NAMES, through whatever alias it was imported as."""
    tree = ast.parse(source)
    aliases = _aliases(tree)
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((f"import {alias.name}", node.lineno) for alias in node.names
                         if alias.name.split(".")[0] in AMBIENT_MODULES)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module.split(".")[0] in AMBIENT_MODULES:
                found.append((f"from {node.module} import ...", node.lineno))
            found.extend((f"{node.module}.{alias.name}", node.lineno) for alias in node.names
                         if f"{node.module}.{alias.name}" in AMBIENT_NAMES)
        elif isinstance(node, ast.Attribute) and _dotted(node, aliases) in AMBIENT_NAMES:
            found.append((str(_dotted(node, aliases)), node.lineno))
    return found


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> the dotted name it was imported as (absolute imports, at any depth)."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                aliases[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def _dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    if isinstance(node, ast.Name):
        return aliases.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value, aliases)
        return None if base is None else f"{base}.{node.attr}"
    return None


# ---------------------------------------------------------------------------------------------
# The rules

MODULES = all_modules()
KNOWN = set(MODULES)


def violations(module: str, path: Path, known: set[str] = KNOWN) -> list[str]:
    layer = layer_of(module)
    if layer is None:
        return [f"{module} is in no layer: place it in the LAYERS table of tests/test_layers.py "
                "(and in DESIGN.md §1)"]
    problems: list[str] = []
    source = path.read_text(encoding="utf-8")
    for imp in imports_of(source, module, path.name == "__init__.py", known):
        if imp.dynamic:
            problems.append(f"{module}:{imp.line} dynamic import: name the module statically "
                            f"(`{imp.module}`)")
            continue
        top = imp.module.split(".")[0]
        if top in EXCLUSIVE and module != EXCLUSIVE[top]:
            problems.append(f"{module}:{imp.line} imports {top}; only {EXCLUSIVE[top]} may")
        if top != "anonmail":
            continue
        target = imp.module
        while target not in known and "." in target:  # `anonmail.x.attr` -> `anonmail.x`
            target = target.rpartition(".")[0]
        target_layer = layer_of(target)
        if target_layer is None:
            continue  # reported when that module itself is checked (or it does not exist)
        if LAYER_INDEX[target_layer] > LAYER_INDEX[layer]:
            problems.append(f"{module}:{imp.line} ({layer}) imports {target} "
                            f"({target_layer}), a higher layer")
    if layer not in AMBIENT_OK_LAYERS and module not in AMBIENT_OK_MODULES:
        for what, line in ambient_uses(source):
            problems.append(f"{module}:{line} uses {what}: take a Clock / an Rng instead")
    return problems


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_respects_layers(module: str) -> None:
    problems = violations(module, MODULES[module])
    assert not problems, "\n".join(problems)


def test_tests_and_checks_use_crypto_and_wire() -> None:
    """cbor2 and nacl stay behind anonmail.wire and anonmail.crypto outside the package too."""
    problems = []
    for folder in ("tests", "threat-model"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for imp in imports_of(path.read_text(encoding="utf-8"), "x", False, set()):
                if not imp.dynamic and imp.module.split(".")[0] in EXCLUSIVE:
                    problems.append(f"{path.relative_to(ROOT)}:{imp.line} imports {imp.module}")
    assert not problems, problems


def test_table_is_consistent() -> None:
    patterns = [p for _, ps in LAYERS for p in ps]
    assert len(patterns) == len(set(patterns))
    for module in MODULES:
        layer_of(module)  # asserts at most one layer matches
    assert layer_of("anonmail.crypto") == "crypto"
    assert layer_of("anonmail.net.tcp") == "net"
    assert layer_of("anonmail") == "edges"
    assert layer_of("anonmail.sim.scenario") == "sim"
    assert layer_of("anonmail.experiments.lookup") == "experiments"
    assert layer_of("anonmail.cli") == layer_of("anonmail.__main__") == "entry"
    assert LAYERS[-1][0] == "entry"  # the command line may import every layer
    assert layer_of("anonmail.unplaced") is None


# ---------------------------------------------------------------------------------------------
# The checker checks itself on small samples


def test_imports_resolution() -> None:
    known = {"anonmail", "anonmail.crypto", "anonmail.net", "anonmail.net.base",
             "anonmail.net.rpc", "anonmail.dht", "anonmail.dht.dht_node"}
    src = (
        "import anonmail.crypto\n"
        "import nacl.bindings as b\n"
        "from anonmail import crypto, __version__\n"
        "from anonmail.net.base import Peer\n"
        "from . import rpc\n"
        "from .base import Network\n"
        "from ..dht import dht_node\n"
        "if TYPE_CHECKING:\n"
        "    from anonmail.dht.dht_node import DhtNode\n"
        "def f():\n"
        "    import cbor2\n"
    )
    got = [i.module for i in imports_of(src, "anonmail.net.tcp", False, known)]
    assert got == ["anonmail.crypto", "nacl.bindings", "anonmail.crypto", "anonmail",
                   "anonmail.net.base", "anonmail.net.rpc", "anonmail.net.base",
                   "anonmail.dht.dht_node", "anonmail.dht.dht_node", "cbor2"]
    pkg = [i.module for i in imports_of("from . import base\n", "anonmail.net", True, known)]
    assert pkg == ["anonmail.net.base"]
    known |= {"anonmail.sim", "anonmail.sim.x"}
    src = (
        "import importlib as il\n"
        "from importlib import import_module as load\n"
        "il.import_module('anonmail.sim.x')\n"
        "load('.rpc', package=__package__)\n"
        "load('..sim', 'anonmail.net')\n"
        "__import__('anonmail', fromlist=['sim', 'nope'])\n"
        "__import__('rpc', globals(), None, (), 1)\n"
        "load(name)\n"
        "__import__(f'anonmail.{x}')\n"
        "load('.x')\n"
        "f = il.import_module\n"
    )
    dyn = imports_of(src, "anonmail.net.tcp", False, known)
    assert [(i.line, i.module) for i in dyn if not i.dynamic][2:] == [
        (3, "anonmail.sim.x"), (4, "anonmail.net.rpc"), (5, "anonmail.sim"), (6, "anonmail.sim"),
        (6, "anonmail"), (7, "anonmail.net.rpc")]
    assert [i.line for i in dyn if i.dynamic] == [8, 9, 10, 11]


def test_ambient_detection() -> None:
    src = (
        "import time\n"
        "import time as t\n"
        "import os\n"
        "from os import urandom\n"
        "from datetime import datetime\n"
        "import random\n"
        "from secrets import token_bytes\n"
        "x = time.time()\n"
        "y = t.monotonic\n"
        "z = os.urandom(3)\n"
        "w = datetime.now()\n"
        "ok = time.sleep(1), os.getpid(), t.strftime('%Y')\n"
    )
    found = sorted(what for what, _ in ambient_uses(src))
    assert found == sorted(["os.urandom", "import random", "from secrets import ...",
                            "time.time", "time.monotonic", "os.urandom",
                            "datetime.datetime.now"])
    assert ambient_uses("import trio\nnow = trio.current_time()\n") == []


def test_an_upward_import_is_reported(tmp_path: Path) -> None:
    """An upward import is reported however it is written, and so is an import the checker
    cannot read. (The real tree is checked by test_module_respects_layers.)"""
    upward = {
        "errors": "import importlib\nimportlib.import_module('anonmail.net.x')\n",
        "rng": "__import__('anonmail.net.x')\n",
        "clock": "def f() -> None:\n    from anonmail.net import x\n",
        "fileio": "from importlib import import_module\nimport_module('.net.x', 'anonmail')\n",
    }
    files = {**upward, "__init__": "", "net/__init__": "", "mystery": "",
             "wire": "from anonmail.net import x\nimport time\nt = time.time()\n",
             "net/x": "from anonmail import wire\nimport cbor2\n",
             "net/y": "import importlib\nimportlib.import_module('anonmail.wire')\n",
             "crypto": "import importlib\nname = 'anonmail.net.x'\nimportlib.import_module(name)\n"}
    (tmp_path / "anonmail" / "net").mkdir(parents=True)
    for name, text in files.items():
        (tmp_path / "anonmail" / f"{name}.py").write_text(text)
    mods = all_modules(tmp_path)
    assert len(mods) == len(files) and "anonmail.net.x" in mods
    problems = {m: violations(m, mods[m], set(mods)) for m in mods}
    for name in upward:
        assert len(problems[f"anonmail.{name}"]) == 1, problems[f"anonmail.{name}"]
        assert problems[f"anonmail.{name}"][0].endswith(
            "(base) imports anonmail.net.x (net), a higher layer")
    assert any("higher layer" in p for p in problems["anonmail.wire"])
    assert any("time.time" in p for p in problems["anonmail.wire"])
    assert problems["anonmail.net.x"] == ["anonmail.net.x:2 imports cbor2; only anonmail.wire may"]
    assert problems["anonmail.net.y"] == []  # downward, named statically: fine
    assert problems["anonmail.crypto"] == ["anonmail.crypto:3 dynamic import: name the module "
                                           "statically (`importlib.import_module(name)`)"]
    assert "in no layer" in problems["anonmail.mystery"][0]
