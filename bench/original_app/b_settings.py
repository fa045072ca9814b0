"""Django settings of side B: the smallest project a messagio 0.7 user would have.

No database (0.7 records nothing) and no result backend; Celery is configured like A's and
C's (bench/celery_options.py), with CELERY_-prefixed settings read by ``config_from_object``.
"""

import os

from celery_options import celery_settings

SECRET_KEY = "bench-only"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = ["messagio"]
DATABASES: dict = {}

for _name, _value in celery_settings(
    os.environ["CELERY_BROKER_URL"], os.environ["BENCH_QUEUE"]
).items():
    globals()[f"CELERY_{_name.upper()}"] = _value
