"""Command-line command groups (edges)."""
