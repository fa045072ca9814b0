"""messagio 0.x's import path of ``AbstractMessageCenter``; new code imports it from
``messagio``."""

from messagio.center import AbstractMessageCenter

__all__ = ["AbstractMessageCenter"]
