"""Downstream use of trained models: encoder evaluation with probes (`genssl downstream`) and the
generated-samples classifier."""
