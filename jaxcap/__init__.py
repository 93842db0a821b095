"""jaxcap: image captioning in JAX/Flax (CNN encoder + LSTM decoder, Show-Attend-Tell attention)."""

__version__ = "0.2.0"
