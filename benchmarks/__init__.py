"""Benchmarks (``make bench``, ``agent-factory bench``): each suite measures the raw nats-py
ceiling in the same run and reports a ratio to it.

Modules: ``harness`` (servers, raw clients, CPU clocks, the last ack's time,
the percentile), ``suites`` (the runner), one per suite (``skeleton``,
``queue`` with ``two_processes``, ``messaging``, ``streams``), ``targets``
(what each number must reach).
"""
