"""Real Celery workers for integration tests: started as processes, stopped by PID.

The stack is the one the environment names (DATABASE_URL, CELERY_BROKER_URL), so one test
suite runs on SQLite + the filesystem broker, PostgreSQL + Redis and PostgreSQL + RabbitMQ.
"""

import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from messagio.brokers import is_amqp, is_redis
from tests.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]


def database_url() -> str:
    """The URL of the test database this process uses, for workers to open the same one."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    user = db["USER"] or ""
    password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
    host = db["HOST"] or "127.0.0.1"
    port = f":{db['PORT']}" if db["PORT"] else ""
    return f"postgres://{user}{password}@{host}{port}/{db['NAME']}"


@dataclass
class Worker:
    process: subprocess.Popen
    log: Path
    name: str

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


@pytest.fixture(scope="session")
def start_worker(django_db_setup, django_db_blocker, tmp_path_factory):
    """Start `celery -A project worker` on the given queues; all are stopped at the end."""
    workers: list[Worker] = []
    logs = tmp_path_factory.mktemp("workers")

    def start(queues: list[str], concurrency: int = 2, ready_timeout: float = 60) -> Worker:
        name = f"test-{uuid.uuid4().hex[:8]}"
        log = logs / f"{name}.log"
        env = dict(os.environ)
        env.update(
            DATABASE_URL=database_url(),
            DJANGO_SETTINGS_MODULE="tests.settings",
            C_FORCE_ROOT="1",  # tests run as root here; never do this in production
            PYTHONUNBUFFERED="1",
        )
        command = [
            sys.executable, "-m", "celery", "-A", "project", "worker",
            "--loglevel=INFO", f"--concurrency={concurrency}", "--prefetch-multiplier=1",
            f"--queues={','.join(queues)}", f"--hostname={name}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        with open(log, "wb") as out:
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        worker = Worker(process, log, name)
        workers.append(worker)

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"worker exited early:\n{worker.output()}")
            return " ready." in worker.output()

        wait_for(ready, timeout=ready_timeout, what=f"worker {name} to be ready")
        return worker

    yield start
    for worker in workers:
        worker.stop()
    purge_test_queues()


def test_queues() -> list[str]:
    return [q.name for q in settings.CELERY_TASK_QUEUES]


def purge_test_queues() -> None:
    """Remove this run's queues from the shared broker, and nothing else."""
    from project.celery import app

    names = test_queues()
    if is_redis(app):
        import redis

        client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
        for name in names:
            keys = [*client.scan_iter(f"{name}*"), *client.scan_iter(f"_kombu.binding*.{name}")]
            if keys:
                client.delete(*keys)
    elif is_amqp(app):
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            for name in names:
                channel.queue_delete(name)
                channel.exchange_delete(name)


@pytest.fixture(scope="session")
def worker(start_worker):
    """One worker for the session, on this run's messagio queue only (the README's route)."""
    return start_worker([settings.MESSAGIO_QUEUE])
