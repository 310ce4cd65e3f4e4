"""RTS/CTS permits (DESIGN.md §6): records (records.py), the storage node's gate (gate.py), the
local permit book of owner and sender (book.py), the sealed requests and grants (notes.py)."""
