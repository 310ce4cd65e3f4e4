"""Argument parsers the experiments' command lines share (argparse `type=` callables): each
refuses a bad value with one line saying what to write."""

from __future__ import annotations

import argparse


def fractions(text: str) -> tuple[float, ...]:
    """`0.05,0.1,0.2` -> (0.05, 0.1, 0.2); every value in [0, 1)."""
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write fractions like 0,0.1,0.2") from None
    if not values or not all(0.0 <= v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: fractions must be in [0, 1)")
    return values
