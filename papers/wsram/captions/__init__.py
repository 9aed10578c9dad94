"""WS-RAM §5.2: caption generation with multi-scale stochastic attention."""
