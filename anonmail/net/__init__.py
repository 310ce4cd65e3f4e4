"""The transport boundary: one `Network` interface, a real TCP transport and a simulated one."""
