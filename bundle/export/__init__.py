"""Export trained downstream checkpoints as standalone MONAI bundles (MONAI Label, model zoo)."""
