"""autodiscover_listeners(): import every installed app's listener modules, once."""

from __future__ import annotations

import threading
from importlib import import_module

from django.utils.module_loading import module_has_submodule

#: Module names looked for in every installed app: ``messagio.py`` (or a ``messagio/``
#: package) and ``tasks.py``.
LISTENER_MODULES = ("messagio", "tasks")

_lock = threading.Lock()
_discovered = False


def autodiscover_listeners() -> None:
    """Import the listener modules of every installed app so their subscriptions register.

    Idempotent. An error inside one of the modules is raised, with the app named in it.
    """
    global _discovered
    with _lock:
        if _discovered:
            return
        from django.apps import apps

        for app_config in apps.get_app_configs():
            for module in LISTENER_MODULES:
                if not module_has_submodule(app_config.module, module):
                    continue
                name = f"{app_config.name}.{module}"
                try:
                    import_module(name)
                except ImportError as exc:
                    raise ImportError(
                        f"messagio could not import {name} of the app {app_config.label!r} "
                        f"while discovering listeners: {exc}"
                    ) from exc
                except Exception as exc:
                    exc.add_note(
                        f"(raised while messagio imported {name} of the app {app_config.label!r})"
                    )
                    raise
        _discovered = True
