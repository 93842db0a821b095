"""jaxcap: image captioning in JAX/Flax (CNN encoder + LSTM decoder, Show-Attend-Tell attention)."""

__version__ = "0.1.0"
