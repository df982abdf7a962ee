"""Scripts that time the code users run and print the figures in docs/BENCHMARKS.md.

Each runs as ``python benchmarks/<name>.py``; the folder is also a package so that tests import
what they share with a benchmark (``from benchmarks import serve_load``) instead of executing a
file by path.
"""
