"""jaxcap: image captioning in JAX/Flax (CNN encoder + LSTM decoder, Show-Attend-Tell attention)."""
from jaxcap import allocator

__version__ = "0.2.0"

# Before JAX and TensorFlow start their thread pools, so that every thread allocates from the one heap.
allocator.keep_freed_memory()
