"""Load: four processes fire 5,000 messagios each at two workers; nothing lost or doubled.

The workers and firing processes share only the broker and the database, as separate
machines would.
"""

import os
import subprocess
import sys
import time
import uuid

import pytest
from django.conf import settings
from django.db import connection

from messagio.brokers import is_amqp, is_redis
from messagio.models import Delivery, Event
from project.celery import app
from tests.integration.conftest import BROKER_URL, ROOT, database_url
from tests.polling import wait_for
from tests.testapp.models import Call

pytestmark = [
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql" or not (is_redis(app) or is_amqp(app)),
        reason="the load test runs on PostgreSQL with Redis or RabbitMQ",
    ),
]

FIRING_PROCESSES = 4
FIRES_EACH = int(os.environ.get("MESSAGIO_LOAD_FIRES", "5000"))


def test_twenty_thousand_fires_from_four_processes_are_each_delivered_exactly_once(
    start_worker, capsys
):
    workers = [start_worker([settings.TEST_LOAD_QUEUE], concurrency=2) for _ in range(2)]
    run = uuid.uuid4().hex[:8]
    env = dict(os.environ, DATABASE_URL=database_url(), CELERY_BROKER_URL=BROKER_URL)
    started = time.monotonic()
    firers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.integration.fire_load", f"{run}-{p}", str(FIRES_EACH)],
            cwd=ROOT,
            env=env,
        )
        for p in range(FIRING_PROCESSES)
    ]
    try:
        for firer in firers:
            assert firer.wait(timeout=600) == 0
    finally:
        for firer in firers:  # none left writing into the database later tests count
            if firer.poll() is None:
                firer.kill()
                firer.wait()
    fired_in = time.monotonic() - started
    total = FIRING_PROCESSES * FIRES_EACH
    load = Delivery.objects.filter(messagio_type="tests.testapp.messagio.LoadPing")

    wait_for(
        lambda: load.filter(status="succeeded").count() == total,
        timeout=600,
        interval=1,
        what=f"{total} deliveries to succeed",
    )
    elapsed = time.monotonic() - started
    for worker in workers:
        worker.stop()

    assert Event.objects.filter(messagio_type="tests.testapp.messagio.LoadPing").count() == total
    assert load.count() == total
    assert load.exclude(attempts=1).count() == 0
    calls = Call.objects.filter(listener="load", token__startswith=run)
    assert calls.count() == total
    assert calls.values("token").distinct().count() == total
    with capsys.disabled():  # the figures go to the CI log and docs/reliability.md
        print(
            f"\nload ({BROKER_URL.split(':')[0]}): {total} fired by {FIRING_PROCESSES} processes "
            f"in {fired_in:.1f}s ({total / fired_in:.0f}/s), all {total} delivered exactly once "
            f"in {elapsed:.1f}s ({total / elapsed:.0f}/s); 0 lost, 0 duplicated"
        )
