"""Retrieve (DESIGN.md §5; seed 002 §3.3, seed 001 §3 steps 2-5).

For a pending notification (check.py):

1. FETCH the object under H("body", message id) from the replicas, closest first, until one's
   digest equals the digest the sender signed into the header (`store.client.fetch_any`; a
   replica without it or with other bytes is skipped, seed 002 §3.3), then from a slightly wider
   set (seed 002 §2.2 "widening its search");
2. inline: decrypt it. Fragmented: decrypt the descriptor and check it names exactly the
   fragments the signed size makes (distinct keys, the sender's chunk sizes); fetch the fragments
   in parallel, each from its own replica and checked against its content address, decrypting
   each as it arrives and stopping at the first that no replica has (fragments.py); check the
   padding and the whole-plaintext digest;
3. check the message's own From and Message-ID against the signed header (a sender may sign only
   as itself: threat T-MAIL-FORGE), then write the exact RFC 5322 bytes to the Maildir (durable);
4. DELETE with this recipient's secret on all replicas of the body and of every fragment (seed
   002 §3.3: "immediately following message retrieval"); the object goes when the last
   recipient has deleted (store/handlers.py), so one recipient cannot tell whether the others
   have read it;
5. forget the pending notification (its body key and delete secret).

A notice is named by (Message-ID, sender): a co-recipient may sign a header reusing a
Message-ID (threat T-MAIL-DEDUP), so `retrieve` and `discard` take the sender, and without it
act on the Message-ID's first notice (maildir.py). A crash after step 3 leaves the message on
disk and the notification pending: retrieving again skips the fetch and repeats the
(idempotent) deletes -- but only if that Maildir copy is the message this notice signs (the
same check as step 3): another sender's copy under the Message-ID must not cost this notice's
delete right with its body never saved (UnreadableMessage). A notice past its body's expiry
(`notices.expired`) is not fetched. If the body is gone or the message does not match its
header, the notification stays pending and the user gets one `UserError` line; `discard`
removes it (and gives up this recipient's right on the network, unless the body expired).
Two kinds:

* `UnreadableMessage`: the stored bytes are the ones the sender signed (digest checked) and
  they are no readable message (do not decrypt, a descriptor that does not fit, a header block
  the parser rejects, another From or Message-ID than the signed header). Trying again fetches
  the same bytes: the agent holds such a notice instead of retrying it (agent/service.py;
  threat T-MAIL-HOSTILE-BODY);
* any other UserError (the body or a fragment is on no reachable node): worth a later try.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from anonmail.errors import RemoteProtocolError, UserError
from anonmail.mail import compose, fragments
from anonmail.mail.envelope import BodyLayout, MailHeader
from anonmail.mail.maildir import LocalMail
from anonmail.mail.notices import body_gone_at, expired
from anonmail.net.base import Network
from anonmail.records.params import NetworkParams
from anonmail.store.client import Lookup, delete_all, fetch_any


class UnreadableMessage(UserError):
    """The body the sender signed is no readable message: retrying cannot help (module
    docstring). The text is one line naming the message id only."""


@dataclass
class RetrieveReport:
    message_id: str
    data: bytes  # the exact RFC 5322 bytes the sender sent
    maildir_key: str
    fragments: int
    fetched: bool  # False: it was already on disk (a retry after a crash)
    body_deleted_on: int  # nodes that no longer hold our right to the body
    fragments_deleted: int  # fragments whose right was dropped on >= r nodes


async def fetch_message(net: Network, dht: Lookup, header: MailHeader, r: int,
                        concurrency: int) -> bytes:
    """Steps 1-3: the verified, decrypted RFC 5322 bytes (nothing saved, nothing deleted)."""
    mid = header.message_id
    blob = await fetch_any(net, dht, header.body_store_key, r, digest=header.body_digest)
    if blob is None:
        blob = await fetch_any(net, dht, header.body_store_key, r + fragments.WIDEN,
                               digest=header.body_digest)
    if blob is None:
        raise UserError(f"the body of {mid} is on no reachable node (expired, or the network "
                        f"is split): try again later, or discard it")
    try:
        if header.layout is BodyLayout.INLINE:
            data = fragments.decrypt_inline(blob, header.body_key, header.body_size)
        else:
            desc = fragments.open_descriptor(blob, header.body_key, header.fragments,
                                             header.body_size)
            try:
                data = await fragments.fetch_body(net, dht, desc, header.body_key,
                                                  header.body_size, r, concurrency=concurrency)
            except fragments.BodyUnavailable as e:
                raise UserError(f"part of {mid} is on no reachable node ({e}): try again "
                                f"later") from None
    except RemoteProtocolError:
        # The digest matched what the sender signed, so the sender stored this garbage.
        raise UnreadableMessage(f"{mid} is damaged: its sender's data does not decrypt; "
                                f"discard it") from None
    _matches(data, header)
    return data


def _matches(data: bytes, header: MailHeader) -> None:
    try:
        facts = compose.parse(data)  # raises UserError only, whatever the bytes
    except UserError:
        raise UnreadableMessage(f"{header.message_id} is not a well-formed message; discard "
                                f"it") from None
    if facts.sender != header.sender.address or facts.message_id != header.message_id:
        raise UnreadableMessage(f"{header.message_id} names another sender or message id "
                                f"than its signed header: not saved; discard it")


async def delete_rights(net: Network, dht: Lookup, header: MailHeader, r: int, *,
                        concurrency: int) -> tuple[int, int]:
    """DELETE this recipient's right to the fragments, then to the body, everywhere. Returns
    (nodes that no longer hold our right to the body, fragments dropped on >= r nodes).

    Fragments first: the descriptor that names them goes with the body's last right."""
    frags = 0
    if header.layout is BodyLayout.FRAGMENTED:
        blob = await fetch_any(net, dht, header.body_store_key, r + fragments.WIDEN,
                               digest=header.body_digest)
        try:
            desc = None if blob is None else fragments.open_descriptor(
                blob, header.body_key, header.fragments, header.body_size)
        except RemoteProtocolError:
            desc = None  # a damaged descriptor names no fragments: they expire with their TTL
        if desc is not None:
            frags = await fragments.delete_fragments(net, dht, desc, header.delete_secret, r,
                                                     concurrency=concurrency,
                                                     widen=fragments.WIDEN)
    body_nodes = await delete_all(net, dht, header.body_store_key, header.delete_secret, r,
                                  widen=fragments.WIDEN)
    return body_nodes, frags


async def retrieve(net: Network, dht: Lookup, local: LocalMail, message_id: str, *,
                   params: NetworkParams, sender: str | None = None, now: float | None = None,
                   concurrency: int = fragments.DEFAULT_CONCURRENCY) -> RetrieveReport:
    """Fetch, verify, decrypt, save and delete one pending message (module docstring): the
    notice of (message_id, sender), or without `sender` the Message-ID's first notice. With
    `now`, a notice whose body can no longer be on the network (`notices.expired`) is not
    fetched: one UserError line."""
    r = params.replication
    notice = local.get_pending(message_id, sender)
    if notice is None:
        if local.has_message(message_id):
            raise UserError(f"{message_id} was already retrieved")
        raise UserError(f"no message {message_id} is waiting: run check first")
    header = notice.header
    gone = now is not None and expired(notice, now, params.clock_skew)
    data = local.get_message(message_id)
    fetched = data is None
    if data is None:
        if gone:
            raise UserError(f"{message_id} expired on {_utc(body_gone_at(notice, 0))}: its "
                            f"body is gone from the network; discard it")
        data = await fetch_message(net, dht, header, r, concurrency)
    else:
        # The Maildir copy under this Message-ID (a retry after a crash, or another sender's
        # message reusing it) stands for this notice only if it is the message the notice
        # signs; else our right to the body would be given up with the body not saved.
        try:
            _matches(data, header)
        except UnreadableMessage:
            raise UnreadableMessage(f"{message_id}: your Maildir holds another message under "
                                    f"this Message-ID; this one is not saved; discard "
                                    f"it") from None
    key = local.add_message(message_id, data)  # durable before anything is deleted
    body_nodes, frags = (0, 0) if gone else await delete_rights(net, dht, header, r,
                                                                concurrency=concurrency)
    local.remove_pending(message_id, header.sender.address)
    return RetrieveReport(message_id, data, key, header.fragments, fetched, body_nodes, frags)


async def discard(net: Network, dht: Lookup, local: LocalMail, message_id: str, *,
                  params: NetworkParams, sender: str | None = None, now: float | None = None,
                  concurrency: int = fragments.DEFAULT_CONCURRENCY) -> int:
    """Give up a pending message: drop our right to its body (unless, with `now`, the body is
    gone anyway) and forget the notification of (message_id, sender), or without `sender`
    the Message-ID's first. Returns the nodes that no longer hold our right to the body."""
    notice = local.get_pending(message_id, sender)
    if notice is None:
        raise UserError(f"no message {message_id} is waiting")
    body_nodes = 0
    if now is None or not expired(notice, now, params.clock_skew):
        body_nodes, _ = await delete_rights(net, dht, notice.header, params.replication,
                                            concurrency=concurrency)
    local.remove_pending(message_id, notice.header.sender.address)
    return body_nodes


def _utc(t: int) -> str:
    return datetime.datetime.fromtimestamp(t, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
