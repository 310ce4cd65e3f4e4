"""anonmail: serverless, end-to-end encrypted e-mail with anonymous senders.

The package is layered (docs/architecture.md): errors → crypto → wire → records → net → dht →
store → permit → anon → mail → node → edges, with `anonmail.sim` on top. Each layer imports only
the ones below it; tests/test_layers.py enforces this.
"""

__version__ = "0.1.0"
