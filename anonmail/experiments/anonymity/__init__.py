"""`anonmail sim anonymity`: who can link whom under the anonymous sending protocol (issue 8)."""
