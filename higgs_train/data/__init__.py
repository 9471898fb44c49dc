"""Manifest -> audio codes -> batches."""
