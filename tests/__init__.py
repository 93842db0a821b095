"""The pytest suite (`python -m pytest -q`; `-m "not slow"` for the fast tier)."""
