"""Scoring checkpoints by listening: intelligibility (ASR + WER/CER), speaker similarity, stopping behaviour."""
