"""sopflow benchmarks: ``python -m bench [names...] [--quick]`` (see bench/__main__.py)."""
