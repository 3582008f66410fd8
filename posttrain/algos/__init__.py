"""Pure tensor functions: losses, estimators and reductions. Nothing here imports from `train/`."""
