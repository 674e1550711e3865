"""Bytes on disk: contract.py (what a format module provides), manifest.py, verify.py, ffcv.py,
dali.py, writer.py (convert, atomic and verified) and converted.py (a converted split, streamed)."""
