"""Load-testing helpers: synthetic media with machine-readable frame codes for latency probes."""
