"""The IMAP view of the local Maildir: folders, persistent UIDs, flags (RFC 3501 §2.3).

Layout (mail/maildir.py): INBOX is `<mail_root>/Maildir`, every other folder `X` is its Maildir++
subfolder `.X` (hierarchy delimiter "."). A message is one file in new/ or cur/; its name before
the first ":" (the base name) identifies it; flags are the letters after ":2," (D \\Draft,
F \\Flagged, R \\Answered, S \\Seen, T \\Deleted); other letters are kept untouched.

Invariants:
* UIDs are strictly ascending in order of discovery and never reused within a UIDVALIDITY
  (RFC 3501 §2.3.1.1): each folder keeps `anonmail-uids` ("anonmail-uids 1 <validity> <next>"
  then "<uid> <base name>" lines), rewritten atomically (fileio.write_private) whenever it
  changes; a missing or damaged file starts a new UIDVALIDITY greater than any seen before;
* a message keeps its UID while another program renames it new/ -> cur/ or changes its flags:
  only the base name counts; files whose base name is not a plain Maildir name, dot files and
  anything but regular files (symbolic links) are ignored;
* Outbox is read-only here (the agent sends from it and renames its files by exact name);
* every change (flags, expunge, append) is a rename, unlink or tmp -> cur delivery, with the
  directory fsynced, so a crash leaves either the old or the new state.
One gateway process owns the uid files: `MailStore` shares one `Folder` per folder between all
sessions of the process.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from anonmail.fileio import fsync_dir, write_private

UID_FILE = "anonmail-uids"
READ_ONLY = frozenset({"Outbox"})
DELIMITER = "."
LETTERS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}
FLAG_LETTER = {v.upper(): k for k, v in LETTERS.items()}
_BASE = re.compile(r"[A-Za-z0-9._,=+-]{1,200}")
_FOLDER = re.compile(r"[\x20-\x7e]{1,200}")


def flag_names(letters: str) -> list[str]:
    return [LETTERS[c] for c in sorted(letters) if c in LETTERS]


def letters_of(flags: list[str]) -> str | None:
    """Maildir letters of IMAP flag names; unknown keywords are dropped (PERMANENTFLAGS does not
    list \\*), None for a malformed flag."""
    out = set()
    for f in flags:
        if f.startswith("\\"):
            letter = FLAG_LETTER.get(f.upper())
            if letter is not None:
                out.add(letter)
            elif f.upper() != "\\RECENT":
                return None
    return "".join(sorted(out))


@dataclass
class Msg:
    uid: int
    base: str
    sub: str  # "new" or "cur"
    info: str  # after ":" ("" when none)
    mtime: float

    @property
    def filename(self) -> str:
        return f"{self.base}:{self.info}" if self.info else self.base

    @property
    def letters(self) -> str:
        return self.info[2:] if self.info.startswith("2,") else ""


def _ensure_maildir(path: Path) -> None:
    for sub in ("", "cur", "new", "tmp"):
        (path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)


class Folder:
    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self.read_only = name in READ_ONLY
        self.messages: dict[int, Msg] = {}  # ascending UID order
        self._dirty = False
        self.uidvalidity, self.uidnext, names = self._load()
        self._uids: dict[str, int] = names
        self.rescan(claim=False)

    # -- the uid file ---------------------------------------------------------------------------

    def _load(self) -> tuple[int, int, dict[str, int]]:
        try:
            lines = (self.path / UID_FILE).read_text("ascii").splitlines()
            magic, version, validity_text, nxt = lines[0].split()
            validity = int(validity_text)
            names: dict[str, int] = {}
            for line in lines[1:]:
                uid_text, base = line.split(" ", 1)
                uid = int(uid_text)
                if not 0 < uid < int(nxt) or not _BASE.fullmatch(base) or base in names:
                    raise ValueError(line)
                names[base] = uid
            if magic != UID_FILE or version != "1" or not 0 < validity < 2**32:
                raise ValueError(magic)
            return validity, int(nxt), names
        except (OSError, ValueError, IndexError, UnicodeDecodeError):
            old = 0
            with contextlib.suppress(OSError, ValueError, IndexError, UnicodeDecodeError):
                old = int((self.path / UID_FILE).read_text("ascii").split()[2])
            # a new UIDVALIDITY: the time, and above any earlier one (RFC 3501 §2.3.1.1)
            validity = min(max(int(time.time()), old + 1), 2**32 - 1)
            self._dirty = True
            return validity, 1, {}

    def _save(self) -> None:
        self._dirty = True  # until written: a failed write is retried by the next rescan
        lines = [f"{UID_FILE} 1 {self.uidvalidity} {self.uidnext}"]
        lines += [f"{m.uid} {m.base}" for m in self.messages.values()]
        write_private(self.path / UID_FILE, ("\n".join(lines) + "\n").encode("ascii"))
        self._dirty = False

    # -- scanning -------------------------------------------------------------------------------

    def _list(self, mtimes: dict[str, float]) -> dict[str, tuple[str, str, float]]:
        """base name -> (sub, info, mtime) of the files in new/ and cur/. new/ is listed first
        and cur/ wins, so a message moved new/ -> cur/ meanwhile is seen at least once. Only
        files not in `mtimes` are stat'ed."""
        found: dict[str, tuple[str, str, float]] = {}
        for sub in ("new", "cur"):
            try:
                entries = list(os.scandir(self.path / sub))
            except OSError:
                continue
            for e in entries:
                base, _, info = e.name.partition(":")
                with contextlib.suppress(OSError):
                    # regular files only: a symbolic link is never followed
                    if _BASE.fullmatch(base) and not base.startswith(".") and e.is_file(
                            follow_symlinks=False):
                        mtime = mtimes[base] if base in mtimes else e.stat().st_mtime
                        found[base] = (sub, info, mtime)
        return found

    def rescan(self, *, claim: bool) -> list[int]:
        """Bring `messages` up to date with the directory: new files get the next UIDs (in
        order of mtime), vanished ones are dropped. With `claim`, files in new/ are moved to
        cur/ (their UIDs are returned: \\Recent for the claiming session)."""
        mtimes = {m.base: m.mtime for m in self.messages.values()}
        found = self._list(mtimes)
        missing = [b for b in mtimes if b not in found]
        if missing:  # a rename by another program may hide a file from one listing: look again
            again = self._list(mtimes)
            found.update((b, again[b]) for b in missing if b in again)
        changed = self._dirty
        if self._uids:  # the first scan after loading the uid file: keep its UIDs
            for base, uid in sorted(self._uids.items(), key=lambda kv: kv[1]):
                if base in found:
                    self.messages[uid] = Msg(uid, base, *found[base])
                else:
                    changed = True
            self._uids = {}
        for uid in [u for u, m in self.messages.items() if m.base not in found]:
            del self.messages[uid]
            changed = True
        known = {m.base for m in self.messages.values()}
        for m in self.messages.values():
            m.sub, m.info, m.mtime = found[m.base]
        for mtime, base in sorted((t[2], b) for b, t in found.items() if b not in known):
            sub, info, _ = found[base]
            self.messages[self.uidnext] = Msg(self.uidnext, base, sub, info, mtime)
            self.uidnext += 1
            changed = True
        claimed = []
        if claim and not self.read_only:
            for m in self.messages.values():
                if m.sub == "new" and self._move(m, m.info or "2,"):
                    claimed.append(m.uid)
        if changed:
            self._save()
        return claimed

    def _move(self, m: Msg, info: str) -> bool:
        src = self.path / m.sub / m.filename
        dst = self.path / "cur" / (f"{m.base}:{info}" if info else m.base)
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            return False  # renamed or removed by another program: the next rescan sees it
        fsync_dir(dst.parent)
        if src.parent != dst.parent:
            fsync_dir(src.parent)
        m.sub, m.info = "cur", info
        return True

    # -- reading and changing -------------------------------------------------------------------

    def read(self, uid: int) -> bytes | None:
        m = self.messages.get(uid)
        for _ in range(2):
            if m is None:
                return None
            try:
                fd = os.open(self.path / m.sub / m.filename, os.O_RDONLY | os.O_NOFOLLOW)
                with os.fdopen(fd, "rb") as f:
                    return f.read()
            except FileNotFoundError:
                self.rescan(claim=False)
                m = self.messages.get(uid)
        return None

    def set_letters(self, uid: int, letters: str) -> bool:
        m = self.messages.get(uid)
        if m is None or self.read_only:
            return False
        other = "".join(c for c in m.letters if c not in LETTERS)
        new = "2," + "".join(sorted(set(letters) | set(other)))
        return new == m.info or self._move(m, new)

    def expunge(self, uids: list[int]) -> list[int]:
        """Delete these messages' files; returns the UIDs actually removed."""
        gone = []
        for uid in uids:
            m = self.messages.get(uid)
            if m is None or self.read_only:
                continue
            for p in (self.path / m.sub / m.filename, self.path / "new" / m.base):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            del self.messages[uid]
            gone.append(uid)
        if gone:
            fsync_dir(self.path / "cur")
            self._save()
        return gone

    def append(self, data: bytes, letters: str, when: float | None) -> int:
        """Deliver a message (tmp/ -> cur/, durably) and return its UID."""
        base = secrets.token_hex(20)  # no host name, time or pid in names (mail/maildir.py)
        tmp = self.path / "tmp" / base
        write_private(tmp, data)
        if when is not None:
            os.utime(tmp, (when, when))
        info = "2," + "".join(sorted(set(letters)))
        os.replace(tmp, self.path / "cur" / f"{base}:{info}")
        fsync_dir(self.path / "cur")
        uid = self.uidnext
        self.uidnext += 1
        self.messages[uid] = Msg(uid, base, "cur", info, when if when is not None else time.time())
        self._save()
        return uid


class MailStore:
    """The folders of one Maildir, shared by every session of a gateway."""

    def __init__(self, maildir: Path) -> None:
        self.root = maildir
        _ensure_maildir(maildir)
        self._folders: dict[str, Folder] = {}

    def path_of(self, name: str) -> Path | None:
        if name.upper() == "INBOX":
            return self.root
        bad = name.startswith(".") or name.endswith(".") or ".." in name
        if bad or not _FOLDER.fullmatch(name) or any(c in name for c in '/\\*%"'):
            return None
        return self.root / f".{name}"

    def canonical(self, name: str) -> str:
        return "INBOX" if name.upper() == "INBOX" else name

    def folder(self, name: str) -> Folder | None:
        name = self.canonical(name)
        path = self.path_of(name)
        if path is None or not (path / "cur").is_dir() or not (path / "new").is_dir():
            self._folders.pop(name, None)
            return None
        f = self._folders.get(name)
        if f is None:
            f = self._folders[name] = Folder(name, path)
        return f

    def names(self) -> list[str]:
        out = ["INBOX"]
        with contextlib.suppress(OSError):
            for e in sorted(os.scandir(self.root), key=lambda e: e.name):
                name = e.name[1:]
                ok = e.name.startswith(".") and e.is_dir() and self.path_of(name) is not None
                if ok and (Path(e.path) / "cur").is_dir() and name.upper() != "INBOX":
                    out.append(name)
        return out

    def create(self, name: str) -> str | None:
        """Make a folder; an error text, or None when done."""
        path = self.path_of(name)
        if path is None or name.upper() == "INBOX":
            return "cannot use that mailbox name"
        if path.exists():
            return "mailbox exists"
        _ensure_maildir(path)
        (path / "maildirfolder").touch(mode=0o600)
        return None

    def delete(self, name: str) -> str | None:
        path = self.path_of(name)
        if path is None or name.upper() == "INBOX" or name in READ_ONLY or name == "Sent":
            return "cannot delete that mailbox"
        f = self.folder(name)
        if f is None:
            return "no such mailbox"
        f.rescan(claim=False)
        if f.messages or any(e.name.startswith(".") and e.is_dir()
                             for e in os.scandir(self.root) if e.name.startswith(f".{name}.")):
            return "mailbox is not empty"
        for sub in ("cur", "new", "tmp"):
            for e in os.scandir(path / sub):
                os.unlink(e.path)
            os.rmdir(path / sub)
        for extra in (UID_FILE, "maildirfolder"):
            with contextlib.suppress(FileNotFoundError):
                (path / extra).unlink()
        try:
            os.rmdir(path)
        except OSError:
            return "mailbox directory holds other files"
        self._folders.pop(name, None)
        return None
