"""The gateway's one login: user name = the address, password = the contents of the home's
`gateway-password` file (random, 0600, created at `init` or the first `anonmail run`).

Failed logins are rate-limited globally (there is one legitimate user, on this machine): after
FREE_FAILURES failures in a row, every attempt is refused unchecked until a lockout ends, which
doubles with each further failure up to MAX_LOCKOUT. So a guessing client learns nothing while
locked out, and another local user can at worst delay the owner's client by MAX_LOCKOUT.
Comparisons are constant-time. Time comes from trio (MockClock in tests).
"""

from __future__ import annotations

import base64
import enum
import hmac
import secrets
from pathlib import Path

import trio

from anonmail.errors import UserError
from anonmail.fileio import create_private
from anonmail.records.certs import normalize_address_or_none

PASSWORD_FILE = "gateway-password"  # noqa: S105 -- the file name, not a secret
FREE_FAILURES = 3
FIRST_LOCKOUT = 2.0  # seconds
MAX_LOCKOUT = 60.0


def ensure_password(home: Path) -> Path:
    """The home's gateway password file, created (random, mode 0600) if it is missing."""
    path = home / PASSWORD_FILE
    if not path.exists():
        word = base64.b32encode(secrets.token_bytes(20)).decode().lower()  # 160 bits
        try:
            create_private(path, word.encode() + b"\n")
        except FileExistsError:
            pass  # made meanwhile by another command: use that one
        except OSError as e:
            raise UserError(f"cannot write {path}: {e.strerror}") from None
    return path


def read_password(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the gateway password {path}: {e}") from None
    if len(text) < 8:
        raise UserError(f"the gateway password in {path} is too short (8 characters at "
                        "least): delete the file and run `anonmail run` to make a new one")
    return text


class Login(enum.Enum):
    OK = "ok"
    WRONG = "wrong"  # wrong user or password
    LOCKED = "locked"  # too many failures: try again later (nothing was checked)


class LoginGuard:
    """Checks (user, password) against the one account, with the rate limit above."""

    def __init__(self, address: str, password: str) -> None:
        self.address = address.lower()
        self._password = password.encode()
        self.failures = 0
        self.locked_until = float("-inf")

    def check(self, user: str, password: str) -> Login:
        now = trio.current_time()
        if now < self.locked_until:
            return Login.LOCKED
        user_ok = (normalize_address_or_none(user.strip()) or "").lower() == self.address
        pw_ok = hmac.compare_digest(password.encode(errors="replace"), self._password)
        if user_ok and pw_ok:
            self.failures = 0
            return Login.OK
        self.failures += 1
        over = self.failures - FREE_FAILURES
        if over > 0:
            self.locked_until = now + min(MAX_LOCKOUT, FIRST_LOCKOUT * 2 ** (over - 1))
        return Login.WRONG

    def retry_after(self) -> float:
        """Seconds until attempts are checked again (0: now)."""
        return max(0.0, self.locked_until - trio.current_time())
