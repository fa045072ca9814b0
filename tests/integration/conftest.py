"""Real Celery workers for integration tests: started as processes, stopped by PID.

The stack is the one the environment names (DATABASE_URL, CELERY_BROKER_URL), so one test
suite runs on SQLite + the filesystem broker, PostgreSQL + Redis and PostgreSQL + RabbitMQ.
"""

import json
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
#: The broker workers use, even while a test points this process at a proxy.
BROKER_URL = settings.CELERY_BROKER_URL


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


def process_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process of the test project (a worker, a firing script): this
    run's settings, database and broker."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url(),
        CELERY_BROKER_URL=BROKER_URL,
        DJANGO_SETTINGS_MODULE="tests.settings",
        C_FORCE_ROOT="1",  # tests run as root here; never do this in production
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


@dataclass
class Worker:
    process: subprocess.Popen
    log: Path
    name: str

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        """Stop the worker with ``sig``: SIGKILL ends its whole process group at once; any
        other signal goes to the main process alone, whose shutdown lets the pool process
        end the task it runs and acknowledge its message (a SIGTERM to the pool process
        would end that task, its outcome recorded but its message not acknowledged: handed
        back, it would run in a later test). Killed after ``timeout``."""
        if self.process.poll() is not None:
            return
        if sig == signal.SIGKILL:
            os.killpg(self.process.pid, sig)
        else:
            os.kill(self.process.pid, sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


@pytest.fixture(scope="package")
def start_worker(django_db_setup, django_db_blocker, tmp_path_factory):
    """Start `celery -A project worker` on the given queues; all are stopped once the tests
    of the package are done: a worker left running would take what later tests publish
    (their records rolled back) and write into the database they count."""
    from project.celery import app

    workers: list[Worker] = []
    logs = tmp_path_factory.mktemp("workers")
    # Unit tests may have published to this run's queues (replays of rolled-back records).
    app.control.purge()

    def start(
        queues: list[str],
        concurrency: int = 2,
        ready_timeout: float = 60,
        name: str = "",
        env: dict[str, str] | None = None,
        options: tuple[str, ...] = (),
    ) -> Worker:
        name = name or f"test-{uuid.uuid4().hex[:8]}"
        log = logs / f"{name}-{uuid.uuid4().hex[:4]}.log"
        env = process_env(env)
        command = [
            sys.executable, "-m", "celery", "-A", "project", "worker",
            "--loglevel=INFO", f"--concurrency={concurrency}", "--prefetch-multiplier=1",
            f"--queues={','.join(queues)}", f"--hostname={name}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat", *options,
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


def purge_queue(name: str, published: int = 0) -> int:
    """Drop the messages waiting in one of this run's queues, once the ``published`` ones a
    test just fired are there (RabbitMQ routes a publish without confirming it, and a purge
    on another connection may come first); how many it dropped. Declared first, as a
    publish would: on RabbitMQ an earlier test may have deleted it."""
    from project.celery import app

    with app.connection_for_write() as conn:
        queue = app.amqp.queues[name](conn.default_channel)
        queue.declare()
        if published:
            wait_for(
                lambda: queue.queue_declare(passive=True).message_count >= published,
                what=f"{published} message(s) to reach {name}",
            )
        return queue.purge() or 0


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
        # Messages a killed worker left unacknowledged sit in kombu's shared "unacked" hash.
        for tag, raw in client.hscan_iter("unacked"):
            try:
                _, exchange, routing_key = json.loads(raw)
            except (ValueError, TypeError):
                continue
            if exchange in names or routing_key in names:
                client.hdel("unacked", tag)
                client.zrem("unacked_index", tag)
    elif is_amqp(app):
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            for name in names:
                channel.queue_delete(name)
                channel.exchange_delete(name)


@pytest.fixture(scope="package")
def worker(start_worker):
    """One worker for the integration tests, on this run's messagio queue only (the
    README's route)."""
    return start_worker([settings.MESSAGIO_QUEUE])


def reset_celery_connections() -> None:
    """Drop the Celery app's pooled connections, so the next publish uses the current URL."""
    from kombu import pools

    from project.celery import app

    pools.reset()  # kombu keeps producer pools per connection URL, process-wide
    app._pool = None
    app.amqp._producer_pool = None


@pytest.fixture
def broker_outage(monkeypatch, tmp_path):
    """Lets a test cut this process's broker connection and bring it back.

    Network brokers are reached through a TCP proxy of the test's own; the filesystem broker
    gets an unusable folder. Workers keep their direct connection.
    """
    from urllib.parse import urlsplit, urlunsplit

    from project.celery import app
    from tests.tcp_proxy import TcpProxy

    class Outage:
        def __init__(self):
            self.proxy = None
            url = urlsplit(BROKER_URL)
            if url.scheme.startswith(("redis", "amqp", "pyamqp")):
                default_port = 6379 if url.scheme.startswith("redis") else 5672
                target = (url.hostname or "127.0.0.1", url.port or default_port)
                self.proxy = TcpProxy(target).start()
                netloc = url.netloc.rsplit("@", 1)
                host = f"127.0.0.1:{self.proxy.port}"
                netloc = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
                monkeypatch.setenv("CELERY_BROKER_URL", urlunsplit(url._replace(netloc=netloc)))
                reset_celery_connections()

        def cut(self):
            if self.proxy is not None:
                self.proxy.cut()
            else:
                broken = tmp_path / "not-a-folder"
                broken.write_text("")
                options = dict(app.conf.broker_transport_options)
                options["data_folder_out"] = str(broken)
                monkeypatch.setitem(app.conf, "broker_transport_options", options)
            reset_celery_connections()

        def restore(self):
            if self.proxy is not None:
                self.proxy.restore()
            else:
                monkeypatch.setitem(
                    app.conf, "broker_transport_options", settings.CELERY_BROKER_TRANSPORT_OPTIONS
                )
            reset_celery_connections()

    outage = Outage()
    yield outage
    if outage.proxy is not None:
        outage.proxy.stop()
    monkeypatch.undo()
    reset_celery_connections()
