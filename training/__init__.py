"""Fine-tuning, evaluation and dataset tooling. Serving code never imports this package."""
