"""The error hierarchy every layer raises.

Invariant: a peer's fault is a `RemoteProtocolError` (counted against that peer, never crashes a
node); our own bug is a `LocalError` (it propagates); a user's mistake is a `UserError`, whose
message is shown to the user as one clear line saying what is wrong and what to do.
"""


class AnonmailError(Exception):
    """Base of every error anonmail raises on purpose."""


class RemoteProtocolError(AnonmailError):
    """A peer sent something malformed, oversized, unauthentic or out of protocol.

    The connection or request that carried it is refused and the peer's fault counter goes up;
    the node keeps serving everyone else.
    """


class BadSignature(RemoteProtocolError):
    """A signature did not verify under the key and domain it claims."""


class DecryptError(RemoteProtocolError):
    """Ciphertext failed authentication: tampered, replayed, reordered or under the wrong key."""


class LocalError(AnonmailError):
    """An internal invariant broke: a bug in this program, not the peer's or the user's fault."""


class LocalProtocolError(LocalError):
    """We tried to do something the protocol does not allow (for example, send before handshake)."""


class UserError(AnonmailError):
    """Something the user asked for cannot be done; the message says what and how to fix it."""


class TransportError(AnonmailError):
    """A peer could not be reached or went away mid-request (timeouts, refused connections).

    Not evidence of hostility: liveness counters go up, fault counters do not.
    """


class Refused(AnonmailError):
    """The peer answered a request with a typed error (ErrorReply) instead of a result."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"refused ({code}): {detail}")
        self.code = code
        self.detail = detail
