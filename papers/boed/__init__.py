"""BOED (Harvey, Teng & Wood, "Near-Optimal Glimpse Sequences for Training Hard Attention Neural
Networks", 2019): Bayesian optimal experimental design of glimpse sequences, used to partially supervise
a hard-attention network."""
