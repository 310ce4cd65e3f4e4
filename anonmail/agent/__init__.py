"""The user's agent on the real network (sessions of the mail commands)."""
