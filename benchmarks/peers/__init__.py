"""Per-library runners of ``benchmarks/throughput.py`` (one module per client library).

Each ``run_<library>.py`` exposes ``run(params, meter) -> dict`` and is only ever imported in a
child process of ``throughput.py``, which runs one (library, scenario) pair per process so that
CPU time and peak RSS belong to that client alone.
"""
