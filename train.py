"""Training entry point (filled in by the trainer issue)."""
raise SystemExit("train.py: the trainer has not landed yet; see README")
