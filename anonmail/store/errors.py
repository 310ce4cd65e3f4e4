"""Typed refusals of the storage service.

Every refusal is a `RemoteProtocolError`, so a transport that meets one raises-through answers
`ErrorReply(REFUSED, detail)` (net/sim.py `SimWorld.exchange`, net/tcp.py `_Inbound._dispatch`).
Both transports also count that as a *fault* against the requesting peer, and a source with
`TcpLimits.fault_threshold` faults is cut off. That is right for forged proofs and content that
does not match its address, and wrong for an honest peer that hit a quota or retried a delete.
So each refusal says whether it is the peer's fault (`fault`):

* `Invalid` (fault): the request cannot come from an honest peer: a fragment whose content does
  not hash to its key, a certificate that does not verify, an owner proof for another node, a
  forged or replayed proof. `StoreService.handle` re-raises these to the transport;
* `Denied` and `QuotaExceeded` (no fault): an honest peer can meet these (a full inbox, a wrong or
  already used delete secret, an older certificate than the one held, a clock off by more than
  the skew). `StoreService.handle` answers them with an `ErrorReply(REFUSED, ...)` it builds
  itself, which both transports pass through without counting a fault.

Details are short, fixed phrases: they never contain keys, addresses, blobs or entries.
"""

from __future__ import annotations

from anonmail.errors import LocalError, RemoteProtocolError


class StoreRefusal(RemoteProtocolError):
    """A well-formed store request this node will not carry out."""

    fault = True


class Invalid(StoreRefusal):
    """The request is inauthentic or inconsistent: the peer's fault (counted)."""

    fault = True


class Denied(StoreRefusal):
    """Not allowed now, but an honest peer can ask this (not counted as a fault)."""

    fault = False


class QuotaExceeded(Denied):
    """Over a size, count or byte quota (not counted as a fault). Details start with "quota"."""


class StorageFailure(LocalError):
    """The local database failed (disk full, I/O error): our problem, never the peer's. Nothing
    was committed and no receipt was signed."""
