"""Benchmarks (``make bench``, ``agent-factory bench``): each suite measures the raw
nats-py ceiling in the same run and reports a ratio to it.

Modules: ``suites`` (the runner and the skeleton suite), ``queue``,
``messaging``, ``targets`` (what each number must reach).
"""
