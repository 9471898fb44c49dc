"""Checkpoints: save (guarded, validated, atomically published), verify, resume, rotate.

Every checkpoint guarantee lives in this package; `layout.py` holds the names.
"""
