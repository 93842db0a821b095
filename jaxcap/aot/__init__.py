"""Ahead-of-time compilation for accelerators this machine does not have: `python -m jaxcap.aot`."""
