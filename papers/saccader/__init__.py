"""Saccader (Elsayed, Kornblith & Le, "Saccader: Improving Accuracy of Hard Attention Models for Vision",
NeurIPS 2019): a BagNet representation network with a learned, non-revisiting location policy; with the
DRAM baseline it is compared against."""
