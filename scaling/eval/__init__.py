"""Evaluation for the `scaling` suite (one run): frozen-feature probes of a trained encoder.
Owns the evaluation protocol (evaluate: embedding a data set on every rank, then the probes and
retrieval), the weighted k-NN classifier (knn) and the linear probe (linear); the probes work on
feature tensors."""
