"""Side B: the original messagio 0.7 from PyPI, run from bench/.venv-0.7 with ``bench/`` as
the working directory (so ``import messagio`` finds 0.7, never this repository's package)."""
