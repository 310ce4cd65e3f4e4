"""Where a node keeps its files (an edge: reads the environment).

The home directory is `--home`, else $ANONMAIL_HOME, else the platform's per-user data directory
(XDG on Linux and BSD, Application Support on macOS, %APPDATA% on Windows). Everything secret in
it is written 0600, and the directory itself 0700. The control socket's path must fit in an
AF_UNIX address (`sun_path`: 108 bytes on Linux, 104 on macOS and the BSDs, with the closing NUL),
so a node refuses a home whose path is too long before it starts anything.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from anonmail.errors import UserError

CONTROL_PATH_MAX = 107 if sys.platform.startswith("linux") else 103  # bytes, without the NUL


def default_home() -> Path:
    env = os.environ.get("ANONMAIL_HOME")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming")) / "anonmail"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "anonmail"
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "anonmail"


@dataclass(frozen=True)
class Home:
    """The files of one node's home directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def node_key(self) -> Path:
        return self.root / "node.key"

    @property
    def contacts(self) -> Path:
        return self.root / "contacts.cbor"

    @property
    def store(self) -> Path:
        return self.root / "store.sqlite"

    @property
    def control(self) -> Path:
        return self.root / "control.sock"

    @property
    def log(self) -> Path:
        return self.root / "node.log"

    def check_control_path(self) -> None:
        """Refuse a home whose control socket path does not fit in an AF_UNIX address (binding
        it would fail only after the node had joined the network)."""
        size = len(os.fsencode(self.control))
        if size > CONTROL_PATH_MAX:
            raise UserError(f"the home directory path is too long for the control socket "
                            f"({size} bytes, limit {CONTROL_PATH_MAX}): use a shorter --home "
                            "or ANONMAIL_HOME")

    def ensure(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise UserError(f"cannot create home directory {self.root}: {e.strerror}") from None
