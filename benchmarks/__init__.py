"""Benchmarks (``make bench``, ``agent-factory bench``): each suite measures the raw nats-py
ceiling in the same run and reports a ratio to it.

Modules: ``harness`` (servers or a cluster, raw clients, CPU clocks, the last
ack's time, the percentile), ``children`` (the child processes of the
multi-process suites), ``suites`` (the runner), one per suite (``skeleton``,
``queue`` with ``two_processes``, ``messaging``, ``streams``, ``fsync``,
``scaling``), ``targets`` (what each number must reach).
"""
