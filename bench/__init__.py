"""Benchmarks that compare axserving side by side with reference servers (`python -m bench --help`)."""
