"""One firing process of the load bench: ``python -m bench.load_fire PROCESS COUNT LISTENERS``.

Like tests/integration/fire_load.py: a process of its own, with its own ``django.setup()``
(settings from the environment bench/load.py passes), firing ``COUNT`` messagios one after
the other. Prints one JSON line: when the first fire started and the last one ended.
"""

from __future__ import annotations

import json
import sys
import time

import django


def main() -> None:
    process, count, listeners = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    django.setup()
    from bench.load_events import TYPES

    messagio_type = TYPES[listeners]
    started = time.time()
    for n in range(count):
        messagio_type(token=f"{process}-{n}").fire()
    ended = time.time()
    print(json.dumps({"process": process, "count": count, "started": started, "ended": ended}))


if __name__ == "__main__":
    main()
