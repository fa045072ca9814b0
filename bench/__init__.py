"""messagio's benchmarks: run ``python bench/run.py [--quick]`` (see README.md)."""
