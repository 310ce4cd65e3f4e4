"""The storage service (DESIGN.md §4; seed 002 §2.2-2.4): objects (message bodies, fragments,
address certificates) and inboxes kept in SQLite on the r nodes closest to their keys.

Modules: `messages` (wire tags 30-59), `errors` (refusals), `db` (SQLite), `proofs` (owner
proofs), `handlers` (the primitives, synchronous and pure given `now`), `service` (what a node
runs: dispatch, garbage collection, republish and repair), `client` (what a user agent calls:
replicated STORE/APPEND with receipt checks, FETCH with content checks, READ/ACK, DELETE).
Reference: docs/storage.md.
"""
