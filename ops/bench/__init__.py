"""``make bench``: benchmarks that print figures, never assert timings.

``python -m ops.bench [NAME...]`` starts a stack of its own (SLUICE_HOME
``.sluice-bench``, ports from ``SLUICE_BENCH_PORT_BASE``, default 25000),
runs each benchmark module named in ``BENCHMARKS`` (all by default) and
stops the stack. Each module has ``run(settings) -> list[str]`` returning
the lines it reports.
"""
