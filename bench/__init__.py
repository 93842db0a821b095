"""Benchmarks that measure jaxcap's speed (and encoder parity), one JSON object each: `python -m bench.NAME`."""
