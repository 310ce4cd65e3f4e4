"""`anonmail bench`: RPC and mail throughput over loopback TCP and the simulated network."""
