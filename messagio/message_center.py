"""messagio 0.x's import path of ``MessageCenter``: code written for it keeps importing.

New code imports it from ``messagio``.
"""

from messagio.center import AbstractMessageCenter, MessageCenter

__all__ = ["AbstractMessageCenter", "MessageCenter"]
