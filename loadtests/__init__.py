"""Load generation and benchmarks for Touchpoint (``make bench``, ``make soak``, ``touchpoint demo``)."""
