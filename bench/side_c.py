"""Side C's driver: raw Celery. Run as ``python -m bench.side_c`` in the repository root."""

from bench.c_app import fire
from bench.driver import serve

if __name__ == "__main__":
    serve(fire)
