"""Benchmarks: each module exposes a click ``command``, run as ``jobplatform bench NAME``."""
