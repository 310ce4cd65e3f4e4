"""Simulation: scenarios, adversaries, metrics, reports (DESIGN.md §9)."""
