"""TNet (Papadopoulos, Korus & Memon, "Hard-Attention for Scalable Image Classification", NeurIPS 2021):
a top-down traversal of an image pyramid that processes only the most informative regions."""
