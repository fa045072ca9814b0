"""messagio 0.x's import path of ``autodiscover_listeners``; new code imports it from
``messagio``."""

from messagio.discovery import autodiscover_listeners

__all__ = ["autodiscover_listeners"]
