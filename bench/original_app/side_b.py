"""Side B's driver: messagio 0.7. Run from ``bench/`` as ``python -m original_app.side_b``
with bench/.venv-0.7's interpreter."""

from driver import serve
from original_app.b_celery import app  # noqa: F401 - the Celery app 0.7's shared task binds to
from original_app.b_events import TYPES


def fire(listeners: int, key: str, sent_at: float, seq: int) -> None:
    TYPES[listeners](key=key, sent_at=sent_at, seq=seq).fire()


if __name__ == "__main__":
    serve(fire)
