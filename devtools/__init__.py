"""Development tools, not shipped in the package (pyproject's python-packages lists
streams, agents and core_ext only): worker processes and a webhook receiver for tests and
benchmarks (workers.py), the simulated payment gateways (gateways.py) and the demo day
(demo.py, `loyalty demo` from a checkout)."""
