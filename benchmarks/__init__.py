"""Benchmarks: speed and accuracy figures the docs cite, each a command (docs/performance.md)."""

import gesture_core.interrupts  # noqa: F401  first: `python -m benchmarks.X` says "interrupted" on a Ctrl-C during its imports
