"""Training configs: `default.py` documents every field; the others override a few."""
