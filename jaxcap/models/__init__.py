"""Flax modules: image encoders, the LSTM decoder and the captioner that joins them."""
