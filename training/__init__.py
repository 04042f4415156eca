"""Fine-tuning, evaluation and dataset tooling. Serving code never imports this package."""

import gesture_core.interrupts  # noqa: F401  first: `python -m training.X` says "interrupted" on a Ctrl-C during its imports
