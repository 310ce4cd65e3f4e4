"""The import rule of DESIGN.md §1, executable.

Every module under anonmail/ is parsed with `ast` (nothing is imported) and must

1. be placed in exactly one layer of LAYERS below (a new module fails until it is placed);
2. import only anonmail modules of its own layer or a lower one (type-only imports count too:
   the rule is about what a layer knows, not about import-time cost);
3. import `nacl` only in anonmail/crypto.py and `cbor2` only in anonmail/wire.py (tests and the
   threat-model checks too: they go through crypto and wire like everyone else);
4. outside the edges, rng.py, clock.py and sim/, not read ambient time or randomness
   (`time.time`, `time.monotonic`, `os.urandom`, `random`, `secrets`, `uuid.uuid4`,
   `datetime.now`, ...): take a `Clock` and an `Rng` instead, so the same code runs under trio's
   MockClock and is reproducible from a seed.
"""

from __future__ import annotations

import ast
import fnmatch
from dataclasses import dataclass
from pathlib import Path

import pytest

# ---------------------------------------------------------------------------------------------
# The layer table, lowest first. A module may import modules of its own layer and of the layers
# above it in this list. Patterns are fnmatch-style over dotted module names.

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("anonmail.errors", "anonmail.rng", "anonmail.clock",
              "anonmail.fileio")),  # fileio: atomic 0600 files, no anonmail imports
    ("crypto", ("anonmail.crypto", "anonmail.crypto.*")),
    ("wire", ("anonmail.wire", "anonmail.wire.*")),
    ("records", ("anonmail.ids", "anonmail.params", "anonmail.certs", "anonmail.receipts",
                 "anonmail.keyfile")),
    ("net", ("anonmail.net", "anonmail.net.*")),
    ("dht", ("anonmail.dht", "anonmail.dht.*")),
    ("store", ("anonmail.store", "anonmail.store.*")),
    ("permit", ("anonmail.permit", "anonmail.permit.*")),
    ("anon", ("anonmail.anon", "anonmail.anon.*")),
    ("mail", ("anonmail.mail", "anonmail.mail.*")),
    ("node", ("anonmail.node", "anonmail.agent")),
    ("edges", ("anonmail", "anonmail.__main__", "anonmail.cli", "anonmail.config",
               "anonmail.paths", "anonmail.control", "anonmail.commands",
               "anonmail.commands.*", "anonmail.gateway", "anonmail.gateway.*")),
    ("sim", ("anonmail.sim", "anonmail.sim.*")),
]

# Third-party packages only one module may import.
EXCLUSIVE = {"nacl": "anonmail.crypto", "cbor2": "anonmail.wire"}

# Layers and modules that may read the real clock and the OS randomness.
AMBIENT_OK_LAYERS = {"edges", "sim"}
AMBIENT_OK_MODULES = {"anonmail.rng", "anonmail.clock"}
AMBIENT_MODULES = {"random", "secrets"}
AMBIENT_NAMES = {
    "time.time", "time.time_ns", "time.monotonic", "time.monotonic_ns",
    "os.urandom", "os.getrandom", "uuid.uuid1", "uuid.uuid4",
    "datetime.datetime.now", "datetime.datetime.utcnow", "datetime.datetime.today",
    "datetime.date.today",
}

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "anonmail"
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
    module: str  # the dotted module (or module.attribute) imported
    line: int


def imports_of(source: str, module: str, is_package: bool, known: set[str]) -> list[Import]:
    """Every import in `source`, resolved to absolute dotted names. `from a import b` counts as
    importing `a.b` when that is a module in `known`, else as importing `a`."""
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
    return out


def ambient_uses(source: str) -> list[tuple[str, int]]:
    """Uses of ambient time or randomness: imports of `random` / `secrets`, and any reference
    (call or not) to a name in AMBIENT_NAMES, through whatever alias it was imported as."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}  # local name -> dotted name
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in AMBIENT_MODULES:
                    found.append((f"import {alias.name}", node.lineno))
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    aliases[top] = top
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module.split(".")[0] in AMBIENT_MODULES:
                found.append((f"from {node.module} import ...", node.lineno))
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                aliases[alias.asname or alias.name] = full
                if full in AMBIENT_NAMES:
                    found.append((full, node.lineno))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            dotted = _dotted(node, aliases)
            if dotted in AMBIENT_NAMES:
                found.append((dotted, node.lineno))
    return found


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
                if imp.module.split(".")[0] in EXCLUSIVE:
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
    assert layer_of("anonmail.unplaced") is None


# ---------------------------------------------------------------------------------------------
# The checker checks itself on small samples


def test_imports_resolution() -> None:
    known = {"anonmail", "anonmail.crypto", "anonmail.net", "anonmail.net.base",
             "anonmail.net.rpc", "anonmail.dht", "anonmail.dht.node"}
    src = (
        "import anonmail.crypto\n"
        "import nacl.bindings as b\n"
        "from anonmail import crypto, __version__\n"
        "from anonmail.net.base import Peer\n"
        "from . import rpc\n"
        "from .base import Network\n"
        "from ..dht import node\n"
        "if TYPE_CHECKING:\n"
        "    from anonmail.dht.node import DhtNode\n"
        "def f():\n"
        "    import cbor2\n"
    )
    got = [i.module for i in imports_of(src, "anonmail.net.tcp", False, known)]
    assert got == ["anonmail.crypto", "nacl.bindings", "anonmail.crypto", "anonmail",
                   "anonmail.net.base", "anonmail.net.rpc", "anonmail.net.base",
                   "anonmail.dht.node", "anonmail.dht.node", "cbor2"]
    pkg = [i.module for i in imports_of("from . import base\n", "anonmail.net", True, known)]
    assert pkg == ["anonmail.net.base"]


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
    pkg = tmp_path / "anonmail"
    (pkg / "net").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "net" / "__init__.py").write_text("")
    (pkg / "wire.py").write_text("from anonmail.net import x\nimport time\nt = time.time()\n")
    (pkg / "net" / "x.py").write_text("from anonmail import wire\nimport cbor2\n")
    (pkg / "mystery.py").write_text("")
    mods = all_modules(tmp_path)
    assert set(mods) == {"anonmail", "anonmail.net", "anonmail.wire", "anonmail.net.x",
                         "anonmail.mystery"}
    known = set(mods)
    wire_problems = violations("anonmail.wire", mods["anonmail.wire"], known)
    x_problems = violations("anonmail.net.x", mods["anonmail.net.x"], known)
    mystery = violations("anonmail.mystery", mods["anonmail.mystery"], known)
    assert any("higher layer" in p for p in wire_problems)
    assert any("time.time" in p for p in wire_problems)
    assert x_problems == ["anonmail.net.x:2 imports cbor2; only anonmail.wire may"]
    assert mystery and "in no layer" in mystery[0]
