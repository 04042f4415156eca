"""HTTP service, webcam demo and capture tools. Never imports training/: everything shared lives in gesture_core."""

import gesture_core.interrupts  # noqa: F401  first: `python -m service.X` says "interrupted" on a Ctrl-C during its imports
