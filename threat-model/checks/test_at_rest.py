"""T-KEYFILE and T-RNG checks that belong to no single module's tests.

* secrets on disk: private files are created 0600 whatever the umask, identities are never
  overwritten, and an atomic replace leaves a 0600 file and no temporary behind;
* randomness: a deterministic `SeededRng` never reaches code a real node runs, and the commands
  that make real keys use the OS CSPRNG (`SystemRng`).
"""

from __future__ import annotations

import ast
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from anonmail.fileio import create_private, write_private

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_create_private_is_0600_and_never_overwrites(tmp_path: Path) -> None:
    key = tmp_path / "node.key"
    with umask(0):
        create_private(key, b"sealed")
    assert mode(key) == 0o600
    assert key.read_bytes() == b"sealed"
    with pytest.raises(FileExistsError):
        create_private(key, b"other")
    assert key.read_bytes() == b"sealed"


def test_write_private_replaces_atomically_with_0600(tmp_path: Path) -> None:
    path = tmp_path / "contacts"
    path.write_bytes(b"old")
    path.chmod(0o644)
    with umask(0):
        write_private(path, b"new")
    assert mode(path) == 0o600
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["contacts"]


# ---------------------------------------------------------------------------------------------
# Randomness

# Modules that may name SeededRng: its definition, the simulator and the experiments on it.
SEEDED_OK = ("anonmail/rng.py", "anonmail/sim/", "anonmail/experiments/")


def _names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    found |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    found |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    return found


def test_seeded_rng_stays_in_simulation() -> None:
    offenders = []
    for path in sorted((ROOT / "anonmail").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(SEEDED_OK):
            continue
        if "SeededRng" in _names(path):
            offenders.append(rel)
    assert not offenders, f"SeededRng (not for real keys) used outside simulation: {offenders}"


def test_commands_that_make_keys_use_the_os_rng() -> None:
    """Every edge module that calls `generate`, `grind_node_key` or `keyfile.seal` also names
    SystemRng (the only Rng a real node uses for keys)."""
    makers = {"generate", "grind_node_key", "seal"}
    edges = [ROOT / "anonmail" / "cli.py", ROOT / "anonmail" / "node.py",
             *sorted((ROOT / "anonmail" / "commands").glob("*.py"))]
    for path in edges:
        if not path.exists():
            continue
        names = _names(path)
        if names & makers:
            assert "SystemRng" in names, f"{path.relative_to(ROOT)} makes keys without SystemRng"
