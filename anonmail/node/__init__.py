"""The running node: a process composed of services behind one request registry."""
