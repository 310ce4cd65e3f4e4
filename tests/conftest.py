"""Shared test configuration: hypothesis profiles.

`ci` (the default) is deterministic (`derandomize=True`, no example database) and sized so the
whole suite stays fast on a small machine. `long` runs many more, randomized examples; select it
with `HYPOTHESIS_PROFILE=long pytest ...`. `dev` is `ci` with randomization, for exploring.

Tests that want fewer examples than the profile (expensive ones) scale from
`hypothesis.settings.default.max_examples`, so `long` scales them too.

The `--runslow` option and the `slow` / `threat` markers come from the threat-model plugin
(threat-model/anonmail_threats.py), which pyproject.toml loads with `-p anonmail_threats`.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,  # the CI machine is small and shared: timing is not a property
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long",
    max_examples=5_000,
    derandomize=False,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", settings.get_profile("ci"), derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
