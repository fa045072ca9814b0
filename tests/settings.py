"""Test settings: the demo project's, with the test app and names unique to this run.

The names travel to worker subprocesses through the environment, so a worker started by a
test consumes the same queues and database as the test process, and nothing here touches the
shared servers' other queues.
"""

import os
import tempfile
import uuid

RUN = os.environ.setdefault("MESSAGIO_TEST_RUN", uuid.uuid4().hex[:10])
os.environ.setdefault("MESSAGIO_VAR_DIR", os.path.join(tempfile.gettempdir(), f"messagio-{RUN}"))
os.environ.setdefault("MESSAGIO_QUEUE", f"messagio-test-{RUN}")
os.environ.setdefault("CELERY_DEFAULT_QUEUE", f"celery-test-{RUN}")
os.environ.setdefault("MESSAGIO_TEST_PRIORITY_QUEUE", f"messagio-prio-{RUN}")
os.environ.setdefault("MESSAGIO_TEST_CRASH_QUEUE", f"messagio-crash-{RUN}")
os.environ.setdefault("MESSAGIO_TEST_LOAD_QUEUE", f"messagio-load-{RUN}")

from kombu import Exchange, Queue  # noqa: E402

from project.settings import *  # noqa: E402,F403
from project.settings import DATABASES, INSTALLED_APPS, VAR_DIR  # noqa: E402

INSTALLED_APPS = [*INSTALLED_APPS, "tests.testapp"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not memory: worker processes started by the tests open the same database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}

#: A second database, for a project that routes messagio's records to a database of their
#: own (tests/test_center.py); only the tests that ask for it create it.
DATABASES["records"] = {
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": str(VAR_DIR / "records.sqlite3"),
    "TEST": {"NAME": str(VAR_DIR / "test-records.sqlite3")},
}

# A worker of a project that accepts pickle alone (the original library's README) is started
# with MESSAGIO_TEST_ACCEPT_CONTENT=pickle.
if os.environ.get("MESSAGIO_TEST_ACCEPT_CONTENT"):
    CELERY_ACCEPT_CONTENT = os.environ["MESSAGIO_TEST_ACCEPT_CONTENT"].split(",")

TEST_PRIORITY_QUEUE = os.environ["MESSAGIO_TEST_PRIORITY_QUEUE"]
TEST_CRASH_QUEUE = os.environ["MESSAGIO_TEST_CRASH_QUEUE"]
TEST_LOAD_QUEUE = os.environ["MESSAGIO_TEST_LOAD_QUEUE"]
CELERY_TASK_QUEUES = (
    *CELERY_TASK_QUEUES,  # noqa: F405
    *(
        Queue(name, Exchange(name), routing_key=name)
        for name in (TEST_PRIORITY_QUEUE, TEST_CRASH_QUEUE, TEST_LOAD_QUEUE)
    ),
)
