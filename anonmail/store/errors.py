"""Typed refusals of the storage service.

Two kinds, by whose fault they are (errors.py):

* `Invalid` (a `RemoteProtocolError`: the peer's fault, counted): the request cannot come from
  an honest peer: a fragment whose content does not hash to its key, a certificate that does
  not verify, an owner proof for another node, a forged or replayed proof;
* `Denied` and `QuotaExceeded` (`Refusal`s: never faults): an honest peer can meet these (a full
  inbox, a wrong or already used delete secret, an older certificate than the one held, a clock
  off by more than the skew). The service registry answers them with `ErrorReply(code, detail)`
  and the asker gets `Refused` with the same code (`errors.ErrorCode`), so callers branch on
  the code, never on the text.

Details are short, fixed phrases: they never contain keys, addresses, blobs or entries.
"""

from __future__ import annotations

from anonmail.errors import ErrorCode, LocalError, Refusal, RemoteProtocolError

__all__ = ["Denied", "ErrorCode", "Invalid", "QuotaExceeded", "StorageFailure"]


class Invalid(RemoteProtocolError):
    """The request is inauthentic or inconsistent: the peer's fault (counted)."""


class Denied(Refusal):
    """Not allowed now, but an honest peer can ask this (not counted as a fault)."""

    code = ErrorCode.DENIED


class QuotaExceeded(Denied):
    """Over a size, count or byte quota (not counted as a fault). Details start with "quota"."""

    code = ErrorCode.QUOTA


class StorageFailure(LocalError):
    """The local database failed (disk full, I/O error): our problem, never the peer's. Nothing
    was committed and no receipt was signed."""
