"""What every gateway server is given: whose mail it serves, how logins are checked, where the
Maildir is, and how a submitted message is handed to the agent.

The servers (smtp.py, pop3.py, imap*.py) know nothing of the network: a submitted message goes
to `submit`, which the running agent implements exactly as `anonmail send` does (queued in the
durable Outbox before the call returns, then sent). Mail to read is the Maildir that `anonmail
inbox`/`read` use (mail/maildir.py): INBOX is `<mail_root>/Maildir`, the folders are its
Maildir++ subfolders (`.Sent`, `.Outbox`).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from anonmail.gateway.auth import LoginGuard
from anonmail.records.certs import ANON_SUFFIX, FINGERPRINT_BYTES, normalize_address_or_none

_LABEL = (FINGERPRINT_BYTES * 8 + 4) // 5  # base32 characters
_ANON_DOMAIN = re.compile(rf"[a-z2-7]{{{_LABEL}}}{re.escape(ANON_SUFFIX)}")
MAX_SUBMISSION = 50 << 20  # octets a client may submit in one message (SMTP SIZE)


@dataclass(frozen=True)
class GatewayContext:
    address: str  # the one user this gateway serves: the login name
    logins: LoginGuard  # password check, with failed logins rate-limited
    mail_root: Path  # LocalMail's root: the Maildir is mail_root / "Maildir"
    # Queue one RFC 5322 message (as the client sent it, Bcc included) for sending, durably,
    # and return its Message-ID; raises UserError (one line: the reply text) when the message
    # cannot be sent at all (e.g. its From is not ours). Sending itself happens afterwards.
    submit: Callable[[bytes], Awaitable[str]]
    max_size: int = MAX_SUBMISSION

    @property
    def maildir(self) -> Path:
        return self.mail_root / "Maildir"


def is_anonmail_recipient(address: str) -> bool:
    """Whether mail to `address` can go through anonmail: a valid addr-spec whose domain is a
    self-certifying `.anon` fingerprint (the gateway is never a relay to other mail systems)."""
    checked = normalize_address_or_none(address)
    if checked is None:
        return False
    # the domain is anon_domain(key): FINGERPRINT_BYTES in unpadded lower-case base32
    return _ANON_DOMAIN.fullmatch(checked.rsplit("@", 1)[1]) is not None
