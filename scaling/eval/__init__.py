"""Evaluation for the `scaling` suite (one run): frozen-feature probes of a trained encoder.
Owns the weighted k-NN classifier (knn) and the linear probe (linear); both work on feature tensors."""
