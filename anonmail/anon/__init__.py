"""Anonymous senders (DESIGN.md §7, seed 002 §4): go-between channels through X (and a
middle relay) to the anonymizers Z and W, and the relay role every node runs."""
