"""A read-and-delete view of one Maildir folder (cur/ and new/), for POP3.

A message is one regular file in new/ or cur/ whose name does not start with ".". Its *base
name* is the file name before the first ":" (the Maildir info, ":2,FLAGS", changes when a
client sets flags; anonmail itself writes 40-hex names into new/, mail/maildir.py).

Invariants:
* a message's uid depends on its base name only, so it survives new/ -> cur/ renames and flag
  changes by other programs (IMAP), and is the same in every session (RFC 1939 §7 UIDL): the
  base name itself when it is 1-70 characters of [A-Za-z0-9._,=+-] (RFC 1939 allows 0x21-0x7E),
  else "h" and 40 hex digits of its BLAKE2b hash;
* sizes are of the message as POP3 sends it: every line ending in CRLF (`to_crlf`), so LIST
  and RETR agree to the octet;
* reading and deleting look the file up again by uid, so a rename in between is harmless; a
  message gone meanwhile is reported as missing, never as an error of the view;
* symbolic links and other non-regular files are ignored (never followed).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

_PLAIN_UID = re.compile(r"[A-Za-z0-9._,=+-]{1,70}")


@dataclass(frozen=True, slots=True)
class MessageInfo:
    uid: str
    size: int  # octets with CRLF line ends (RFC 1939 §5 LIST)
    mtime_ns: int


def uid_of(name: str) -> str:
    """The stable unique id of the message in file `name` (RFC 1939 §7 UIDL)."""
    base = name.split(":", 1)[0]
    if _PLAIN_UID.fullmatch(base):
        return base
    return "h" + hashlib.blake2b(base.encode("utf-8", "surrogateescape"),
                                 digest_size=20).hexdigest()


def to_crlf(data: bytes) -> bytes:
    """`data` with every line ending in CRLF: a bare LF becomes CRLF, a bare CR stays (it is no
    line end), and a last line without a line end gets one."""
    out = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if out and not out.endswith(b"\r\n"):
        out += b"\r\n"
    return out


class MaildirView:
    """One Maildir folder. `messages()` lists it; the size of a file is computed once per
    (name, size, mtime) and cached, so listing a large maildrop again is cheap."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._sizes: dict[tuple[str, int, int], int] = {}

    def _files(self) -> dict[str, tuple[Path, os.stat_result]]:
        found: dict[str, tuple[Path, os.stat_result]] = {}
        for sub in ("new", "cur"):
            try:
                entries = list(os.scandir(self.root / sub))
            except FileNotFoundError:
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed meanwhile
                if stat.S_ISREG(st.st_mode):
                    found.setdefault(uid_of(entry.name), (Path(entry.path), st))
        return found

    def messages(self) -> list[MessageInfo]:
        """Every message, oldest first (by modification time, then uid)."""
        out = []
        sizes: dict[tuple[str, int, int], int] = {}
        for uid, (path, st) in self._files().items():
            key = (path.name, st.st_size, st.st_mtime_ns)
            size = self._sizes.get(key)
            if size is None:
                data = self._read(path)
                if data is None:
                    continue
                size = len(to_crlf(data))
            sizes[key] = size
            out.append(MessageInfo(uid, size, st.st_mtime_ns))
        self._sizes = sizes  # forget what is gone
        return sorted(out, key=lambda m: (m.mtime_ns, m.uid))

    def read(self, uid: str) -> bytes | None:
        """The message's bytes as stored, or None if it is gone."""
        found = self._files().get(uid)
        return None if found is None else self._read(found[0])

    def delete(self, uid: str) -> bool:
        """Remove the message; False if it was already gone."""
        found = self._files().get(uid)
        if found is None:
            return False
        try:
            found[0].unlink()
        except FileNotFoundError:
            return False
        fd = os.open(found[0].parent, os.O_RDONLY)  # durable, like mail/maildir.py
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    @staticmethod
    def _read(path: Path) -> bytes | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # gone meanwhile, or a symbolic link put in its place
            return None
        with os.fdopen(fd, "rb") as f:
            return f.read()
