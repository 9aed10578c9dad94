"""Shared core for the hard-attention reproductions: glimpse ops, estimators, backbones, metrics,
data, the Accelerate training loop and the result store. Never imports from `papers/`."""
