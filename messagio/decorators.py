"""messagio 0.x's import path of ``listen_to_message``; new code imports it from ``messagio``."""

from messagio.registry import listen_to_message

__all__ = ["listen_to_message"]
