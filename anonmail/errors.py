"""The error hierarchy every layer raises, and the codes an error reply carries.

Invariant: a peer's fault is a `RemoteProtocolError` (counted against that peer, never crashes a
node); an honest refusal (quota, denied, wrong secret, ...) is a `Refusal`, answered with a typed
reply that carries its `ErrorCode` and never counted as a fault; our own bug is a `LocalError`
(it propagates); a user's mistake is a `UserError`, whose message is shown to the user as one
clear line saying what is wrong and what to do. On the asking side every error reply arrives as
`Refused`, whose `code` says which it was.
"""

import enum


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


class ErrorCode(enum.IntEnum):
    """What an error reply (net/rpc.py `ErrorReply`) says. Codes below 10 are the transport's
    and the asker's faults; 10 and up are honest refusals, which an honest peer can meet."""

    MALFORMED = 1  # the request failed decoding or validation (the asker's fault)
    REFUSED = 2  # inauthentic or inconsistent: a forged proof, content not matching its key
    BUSY = 3  # too many requests in flight from this peer; try later
    UNSUPPORTED = 4  # no service here answers this request type
    INTERNAL = 5  # our fault; details are not sent
    DENIED = 10  # not allowed now (a policy, an entry already acknowledged)
    QUOTA = 11  # over a size or count limit, or the node's storage is full
    INBOX_FULL = 12  # the inbox holds as many entries or bytes as it may
    CONFLICT = 13  # the key holds something else (another object, kind, or a newer certificate)
    GONE = 14  # the object was deleted
    WRONG_SECRET = 15  # a delete secret that does not match
    EXPIRED = 16  # what the request carries has expired or expires now
    CLOCK_SKEW = 17  # a timestamp outside the allowed clock skew
    UNREACHABLE = 18  # a relay could not reach the next hop of a circuit (anon/relay.py)
    # Permits (DESIGN.md §6, anonmail/permit/). Never faults: appends arrive through relays
    # and by replication, so a bad permit is not the forwarding peer's doing.
    NO_POLICY = 19  # this replica holds no inbox policy for the inbox: push it, then retry
    PERMIT_REQUIRED = 20  # the inbox takes appends only with a permit token (or a stamp: open)
    PERMIT_SPENT = 21  # the token was spent on another entry
    PERMIT_REVOKED = 22  # the owner revoked the token
    PERMIT_INVALID = 23  # the token is not the owner's, is for another inbox, or expired
    STAMP_REQUIRED = 24  # a proof-of-work stamp at the policy's difficulty, for today, is needed

    @property
    def is_fault(self) -> bool:
        """Is a reply with this code evidence against the asker (counted as a fault)?"""
        return self in (ErrorCode.MALFORMED, ErrorCode.REFUSED)


class Refusal(AnonmailError):
    """A well-formed request this node will not carry out, for a reason an honest peer can meet.

    The service registry answers it with `ErrorReply(code, detail)` and counts no fault.
    Details are short, fixed phrases: never keys, addresses, blobs or entries."""

    code = ErrorCode.DENIED

    def __init__(self, detail: str, code: ErrorCode | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


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


class OtherNetwork(TransportError):
    """The node we dialled answered that it is on another network (test vs main): no fault of
    its own, and no node we can use. `network_id` is the one it named (unauthenticated: an
    attacker on the path could name any, as it could cut the connection)."""

    def __init__(self, network_id: bytes) -> None:
        super().__init__(f"handshake: the peer is on another network "
                         f"({network_name(network_id)})")
        self.network_id = network_id


def network_name(network_id: bytes) -> str:
    """A network id as a user reads it: its text (e.g. anonmail-main-v1), else hex."""
    if network_id.isascii() and network_id.decode("ascii").isprintable():
        return network_id.decode("ascii")
    return network_id.hex()


class BadContact(TransportError):
    """Another node answered at the endpoint a certificate names (a stale entry, or an address
    a third party named to aim our suspicion at its owner). Not the answering node's fault, so
    nothing is counted against its address; the contact is just dropped."""


class Refused(AnonmailError):
    """The peer answered a request with a typed error (ErrorReply) instead of a result."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(f"refused ({code.name}): {detail}")
        self.code = code
        self.detail = detail
