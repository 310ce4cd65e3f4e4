"""The mail user agent (DESIGN.md §5; seed 002 §3): compose, seal, send, check, retrieve.

Modules, one concept each:

| module | job |
|---|---|
| `identity` | an address identity: Ed25519 sign key, X25519 seal key, AddressCert; key file |
| `compose` | RFC 5322 messages (stdlib `email`): build, prepare, parse; UserError on bad input |
| `envelope` | the per-recipient sealed header (wire tags 101-103), the sender's signature |
| `fragments` | body encryption, padding, fragments and the descriptor of large bodies (tag 104) |
| `maildir` | the local store: Maildir of retrieved mail, Outbox, Sent, what Outbox mail awaits |
| `notices` | pending notifications (per Message-ID, sender; tag 105), seen entries, expiry |
| `send` | Send: certificates, STORE once, seal + APPEND per recipient, receipts, retries |
| `check` | Check: READ all inbox replicas, open, verify, save locally, then ACK |
| `retrieve` | Retrieve: FETCH body (and fragments), verify, decrypt, save, DELETE |
| `user_agent` | `MailAgent`: the above bundled for one identity on one node |

Wire tags 100-119 are the mail layer's (net/rpc.py). Reference: docs/mail.md. Nothing in this
package logs a body, a subject or an address.
"""
