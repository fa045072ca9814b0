"""messagio's benchmarks: A (messagio, recording everything) against B (messagio 0.7 from PyPI)
and C (raw Celery), in one run, on PostgreSQL + Redis and PostgreSQL + RabbitMQ.

    python bench/run.py              figures 1 to 5 (under 20 minutes on 2 cores)
    python bench/run.py --quick      figures 1 to 4, fewer and smaller runs (under 3 minutes)
    python bench/run.py --figures 6  figure 6 alone: the admin at 1M events (3 to 7 minutes)

Run it with an interpreter that has messagio's requirements (``.venv`` made by bin/test, or
any virtualenv with requirements.txt). B's side runs in bench/.venv-0.7, made here on first
use. The bench owns everything it touches: a PostgreSQL database ``messagio_bench_<run>``,
queues and Redis keys named ``bench-<run>...``, and the worker processes it starts (stopped
by their PID); all are removed at the end. Results go to bench/RESULTS.md (see README.md).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
VENV_07 = BENCH / ".venv-0.7"
PROFILES = BENCH / "profiles"
RESULTS = BENCH / "RESULTS.md"
#: What the bench installs into B's virtualenv (pyinstrument only for the profiles): Celery
#: and kombu as A runs them, so that the two sides differ by the library alone.
VENV_07_REQUIREMENTS = [
    "messagio==0.7",
    f"celery[redis]=={importlib.metadata.version('celery')}",
    f"kombu=={importlib.metadata.version('kombu')}",
    "django",
    "pyinstrument",
]

POSTGRES = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432")
BROKERS = {
    "redis": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
    "rabbitmq": os.environ.get("BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//"),
}
#: Where listeners report that they ran (Redis also when the broker is RabbitMQ).
PROBE_URL = os.environ.get("BENCH_PROBE_URL", BROKERS["redis"])
BROKER_TITLES = {"redis": "PostgreSQL + Redis", "rabbitmq": "PostgreSQL + RabbitMQ"}
SIDES = ("A", "B", "C")
SIDE_NAMES = {
    "A": "messagio (this repo, recording)",
    "B": "messagio 0.7 (PyPI)",
    "C": "raw Celery",
}
LISTENER_COUNTS = (1, 4, 16)

#: The issue's targets, checked at the end (figure 6's in bench/admin_at_scale.py).
TARGETS = {
    "fire4": "fire throughput, 4 listeners: A/B >= 2.0 (each broker)",
    "fire16": "fire throughput, 16 listeners: A/B >= 5.0 (each broker)",
    "e2e": "end-to-end deliveries/s, 4 listeners: A/B >= 1.5 (each broker)",
    "latency": "latency p99: A <= 1.5 x B (each broker)",
    "statements": "SQL statements per fire outside a transaction: <= 2, any listener count",
    "memory": "worker RSS growth over 100,000 deliveries: < 10% (A)",
    "admin": "every admin screen at 1M events: < 0.5 s, query count independent of size",
}


@dataclass
class Plan:
    """How much each figure runs; ``reps`` runs of each side, interleaved A, B, C."""

    fire_reps: int
    fire_seconds: float
    e2e_reps: int
    e2e_messagios: int
    latency_reps: int
    latency_messagios: int
    recording_fires: int
    memory_deliveries: int
    latency_rate: float = 100.0
    prefetch: int = 4
    figures: tuple[int, ...] = (1, 2, 3, 4, 5)


FULL = Plan(
    fire_reps=5, fire_seconds=0.8, e2e_reps=3, e2e_messagios=5000, latency_reps=3,
    latency_messagios=500, recording_fires=500, memory_deliveries=100_000,
)  # fmt: skip
QUICK = Plan(
    fire_reps=3, fire_seconds=0.4, e2e_reps=3, e2e_messagios=300, latency_reps=3,
    latency_messagios=150, recording_fires=200, memory_deliveries=0, figures=(1, 2, 3, 4),
)  # fmt: skip


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def wait_until(probe: Callable[[], Any], timeout: float, what: str, interval: float = 0.005) -> Any:
    """Poll ``probe`` until it returns something truthy; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def rotated(items: tuple[str, ...], shift: int) -> list[str]:
    """A, B, C; then B, C, A; ...: each side runs first, second and third in turn."""
    shift %= len(items)
    return list(items[shift:] + items[:shift])


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# --- Processes the bench owns ----------------------------------------------------------------


def process_tree_rss(pid: int) -> dict[int, int]:
    """RSS in bytes of ``pid`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    rss: dict[int, int] = {}
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss[current] = int(line.split()[1]) * 1024
        except OSError:
            continue
        todo.extend(children.get(current, []))
    return rss


def stop_process(process: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a process the bench started (its own session) by its PID: TERM, then KILL."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    except ProcessLookupError:
        pass


class Side:
    """One library on one broker: its driver process (which fires) and its worker."""

    def __init__(self, name: str, broker: str, run: Run) -> None:
        self.name = name
        self.broker = broker
        self.run = run
        self.queue = f"{run.prefix}-{broker}-{name.lower()}"
        self.hostname = f"{self.queue}@%h"
        self.driver: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self.worker_log: Path | None = None
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE", "VIRTUAL_ENV")
        }
        env.update(
            CELERY_BROKER_URL=BROKERS[broker],
            BENCH_PROBE_URL=PROBE_URL,
            BENCH_PREFIX=run.prefix,
            BENCH_QUEUE=self.queue,
            C_FORCE_ROOT="1",  # everything runs as root here; B and C accept pickle
            PYTHONUNBUFFERED="1",
        )
        if name == "A":
            env.update(
                DJANGO_SETTINGS_MODULE="project.settings",
                DATABASE_URL=run.database_url
                + (f"?{run.a_database_query}" if run.a_database_query else ""),
                DJANGO_DEBUG="0",
                MESSAGIO_QUEUE=self.queue,
                CELERY_DEFAULT_QUEUE=f"{self.queue}-default",
                MESSAGIO_VAR_DIR=str(run.tmp / "var"),
            )
            self.python, self.cwd = sys.executable, ROOT
            self.driver_module, self.app = "bench.side_a", "project"
        elif name == "B":
            self.python, self.cwd = str(VENV_07 / "bin" / "python"), BENCH
            self.driver_module, self.app = "original_app.side_b", "original_app.b_celery"
        else:
            self.python, self.cwd = sys.executable, ROOT
            self.driver_module, self.app = "bench.side_c", "bench.c_app"
        self.env = env

    @property
    def queues(self) -> list[str]:
        return [self.queue, f"{self.queue}-default"] if self.name == "A" else [self.queue]

    # The driver ---------------------------------------------------------------------------

    def start_driver(self) -> None:
        log_path = self.run.tmp / f"driver-{self.queue}.log"
        self.driver = subprocess.Popen(
            [self.python, "-m", self.driver_module], cwd=self.cwd, env=self.env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log_path, "wb"),
            text=True, bufsize=1, start_new_session=True,
        )  # fmt: skip
        self.run.processes.append(self.driver)
        self.driver_log = log_path

    def receive(self) -> Any:
        assert self.driver is not None and self.driver.stdout is not None
        line = self.driver.stdout.readline()
        if not line:
            raise RuntimeError(
                f"driver {self.name} ({self.broker}) exited:\n{self.driver_log.read_text()[-3000:]}"
            )
        reply = json.loads(line)
        if not reply["ok"]:
            raise RuntimeError(f"driver {self.name} ({self.broker}) failed:\n{reply['error']}")
        return reply["result"]

    def send(self, cmd: str, **args: Any) -> None:
        assert self.driver is not None and self.driver.stdin is not None
        self.driver.stdin.write(json.dumps({"cmd": cmd, "args": args}) + "\n")
        self.driver.stdin.flush()

    def call(self, cmd: str, **args: Any) -> Any:
        self.send(cmd, **args)
        return self.receive()

    # The worker ---------------------------------------------------------------------------

    def start_worker(self) -> None:
        """``celery -A <app> worker -c 2`` on this side's queue, in its own session."""
        self.worker_log = self.run.tmp / f"worker-{self.queue}-{uuid.uuid4().hex[:4]}.log"
        command = [
            self.python, "-m", "celery", "-A", self.app, "worker", "--loglevel=WARNING",
            "-c", "2", f"--prefetch-multiplier={self.run.plan.prefetch}", "-Q", self.queue,
            f"--hostname={self.hostname}", "--without-gossip", "--without-mingle",
            "--without-heartbeat",
        ]  # fmt: skip
        self.worker_command = " ".join(shlex.quote(c) for c in command)
        self.worker = subprocess.Popen(
            command, cwd=self.cwd, env=self.env, stdout=open(self.worker_log, "wb"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.run.processes.append(self.worker)

    def warm_worker(self, messagios: int = 25) -> None:
        """Wait until the worker runs listeners: a few fires, every listener run counted."""
        key = f"{self.run.prefix}:warm:{self.queue}:{uuid.uuid4().hex[:6]}"
        self.call("fire_batch", listeners=4, count=messagios, key=key)

        def done() -> bool:
            if self.worker is None or self.worker.poll() is not None:
                log_text = self.worker_log.read_text() if self.worker_log else ""
                raise RuntimeError(f"worker {self.queue} exited:\n{log_text[-3000:]}")
            return self.run.probe_count(key) >= messagios * 4

        wait_until(done, 120, f"worker {self.queue} to run its first listeners", 0.02)
        if self.name == "A":
            self.run.wait_recorded(messagios * 4, None)

    def stop_worker(self) -> None:
        if self.worker is not None:
            stop_process(self.worker)
            self.worker = None

    def rss(self) -> dict[int, int]:
        assert self.worker is not None
        return process_tree_rss(self.worker.pid)


# --- Broker and database housekeeping --------------------------------------------------------


class BrokerAdmin:
    """Purges and deletes this run's queues, and nothing else."""

    def __init__(self, broker: str) -> None:
        self.broker = broker
        self.url = BROKERS[broker]
        if broker == "redis":
            import redis

            self.client = redis.Redis.from_url(self.url)
        else:
            from kombu import Connection

            self.connection = Connection(self.url)
            self.connection.ensure_connection(max_retries=3)

    def server_version(self) -> str:
        if self.broker == "redis":
            return f"Redis {self.client.info('server')['redis_version']}"
        props = self.connection.connection.server_properties
        return f"RabbitMQ {props.get('version', '?')}"

    def _redis_queue_keys(self, queue: str) -> list[str]:
        # kombu's Redis transport keeps one list per priority step: "<queue>", "<queue>:1", ...
        return [queue, *(f"{queue}:{step}" for step in range(1, 10))]

    def purge(self, queue: str) -> None:
        if self.broker == "redis":
            self.client.delete(*self._redis_queue_keys(queue))
            return
        channel = self.connection.channel()
        try:
            channel.queue_purge(queue)
        except Exception:  # noqa: BLE001 - not declared yet: nothing to purge
            pass
        finally:
            try:
                channel.close()
            except Exception:  # noqa: BLE001 - a channel closed by the server's 404
                pass

    def delete(self, queues: Iterable[str], prefix: str) -> None:
        """Remove this run's queues, exchanges, bindings and unacked messages."""
        queues = list(queues)
        if self.broker == "redis":
            keys = [k for q in queues for k in self._redis_queue_keys(q)]
            keys += [
                f"_kombu.{kind}.{q}" for q in queues for kind in ("binding", "binding_permanent")
            ]
            self.client.delete(*keys)
            for key in self.client.scan_iter(f"{prefix}*"):  # pidbox lists of our workers
                self.client.delete(key)
            for binding in self.client.scan_iter("_kombu.binding.*pidbox"):
                for member in self.client.smembers(binding):
                    if prefix.encode() in member:
                        self.client.srem(binding, member)
            for tag, raw in self.client.hscan_iter("unacked"):
                try:
                    _, exchange, routing_key = json.loads(raw)
                except (ValueError, TypeError):
                    continue
                if exchange in queues or routing_key in queues:
                    self.client.hdel("unacked", tag)
                    self.client.zrem("unacked_index", tag)
            return
        for queue in queues:
            for action in ("queue_delete", "exchange_delete"):
                channel = self.connection.channel()
                try:
                    getattr(channel, action)(queue)
                except Exception:  # noqa: BLE001 - never declared
                    pass
                finally:
                    try:
                        channel.close()
                    except Exception:  # noqa: BLE001
                        pass

    def close(self) -> None:
        if self.broker == "redis":
            self.client.close()
        else:
            self.connection.release()


class Run:
    """One run of the bench: its names, its database, its processes and its results."""

    def __init__(self, plan: Plan, brokers: list[str], command: str, profile: bool) -> None:
        import redis

        self.plan = plan
        self.brokers = brokers
        self.command = command
        self.profile = profile
        self.id = uuid.uuid4().hex[:8]
        self.prefix = f"bench-{self.id}"
        self.database = f"messagio_bench_{self.id}"
        self.database_url = f"{POSTGRES}/{self.database}"
        #: Experiments only, e.g. "options=-c%20synchronous_commit%3Doff": A's connections.
        self.a_database_query = os.environ.get("BENCH_A_DATABASE_QUERY", "")
        self.tmp = Path(tempfile.mkdtemp(prefix=f"messagio-{self.prefix}-"))
        self.processes: list[subprocess.Popen] = []
        self.probe = redis.Redis.from_url(PROBE_URL)
        self.results: dict[str, Any] = {"brokers": {}}
        self.db: Any = None
        self.memory_brokers: list[str] = brokers[:1]
        #: Events of figure 6's large database (None: the issue's 1,000,000).
        self.admin_events: int | None = None

    # Database -------------------------------------------------------------------------------

    def create_database(self) -> None:
        import psycopg

        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.database}"')
        env = dict(os.environ, DATABASE_URL=self.database_url, DJANGO_DEBUG="0",
                   DJANGO_SETTINGS_MODULE="project.settings",
                   MESSAGIO_VAR_DIR=str(self.tmp / "var"))  # fmt: skip
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True
        )
        self.db = psycopg.connect(self.database_url, autocommit=True)

    def drop_database(self) -> None:
        import psycopg

        if self.db is not None:
            self.db.close()
        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def recorded(self) -> int:
        row = self.db.execute(
            "SELECT count(*) FROM messagio_delivery WHERE status = 'succeeded'"
        ).fetchone()
        return int(row[0])

    def wait_recorded(self, expected: int, timeout: float | None = 120) -> float:
        """Wait until ``expected`` Deliveries are recorded succeeded; the time it happened."""
        wait_until(
            lambda: self.recorded() >= expected, timeout or 120,
            f"{expected} deliveries recorded succeeded", 0.01,
        )  # fmt: skip
        return time.time()

    # Probe ----------------------------------------------------------------------------------

    def probe_count(self, key: str) -> int:
        return int(self.probe.get(key) or 0)

    def wait_hits(self, key: str, expected: int, timeout: float, interval: float = 0.005) -> None:
        """Wait until ``expected`` listener runs were counted under ``key``."""
        wait_until(lambda: self.probe_count(key) >= expected, timeout, f"{expected} runs", interval)

    def probe_key(self, *parts: Any) -> str:
        return ":".join([self.prefix, *map(str, parts)])

    def cleanup(self) -> None:
        for process in reversed(self.processes):
            stop_process(process)
        for key in self.probe.scan_iter(f"{self.prefix}:*"):
            self.probe.delete(key)


# --- Figures ---------------------------------------------------------------------------------


def figure_1_fire_throughput(run: Run, sides: dict[str, Side], admin: BrokerAdmin) -> dict:
    """Messagios fired per second, no worker running, with 1, 4 and 16 listeners."""
    plan = run.plan
    result: dict[str, Any] = {}
    for listeners in LISTENER_COUNTS:
        rates: dict[str, list[float]] = {s: [] for s in SIDES}
        for rep in range(plan.fire_reps):
            for name in rotated(SIDES, rep):
                side = sides[name]
                if name == "A":
                    side.call("reset")
                admin.purge(side.queue)
                rate = side.call("fire_rate", listeners=listeners, seconds=plan.fire_seconds)
                rates[name].append(rate["rate"])
                admin.purge(side.queue)
        result[str(listeners)] = rates
        log(
            f"  fig 1, {listeners:2d} listeners: "
            + ", ".join(f"{s} {statistics.median(rates[s]):7.0f}/s" for s in SIDES)
        )
    return result


def figure_2_end_to_end(run: Run, sides: dict[str, Side], memory: dict | None) -> dict:
    """Deliveries per second from the first fire until every listener ran (A: recorded)."""
    plan = run.plan
    count, listeners = plan.e2e_messagios, 4
    expected = count * listeners
    rates: dict[str, list[float]] = {s: [] for s in SIDES}
    for rep in range(plan.e2e_reps):
        for name in rotated(SIDES, rep):
            side = sides[name]
            if name == "A":
                side.call("reset")
            key = run.probe_key("e2e", side.queue, rep)
            side.send("fire_batch", listeners=listeners, count=count, key=key)
            timeout = 60 + expected / 50
            run.wait_hits(key, expected, timeout)
            done = time.time()
            fired = side.receive()
            if name == "A":
                done = run.wait_recorded(expected, timeout)
            rates[name].append(expected / (done - fired["t0"]))
            count_deliveries(memory, name, expected, side)
    log("  fig 2: " + ", ".join(f"{s} {statistics.median(rates[s]):7.0f}/s" for s in SIDES))
    return {"deliveries_per_s": rates, "messagios": count, "listeners": listeners}


def figure_3_latency(run: Run, sides: dict[str, Side], memory: dict | None) -> dict:
    """Fire-to-listener-start latency at a steady rate, one listener."""
    plan = run.plan
    count = plan.latency_messagios
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in SIDES}
    for rep in range(plan.latency_reps):
        for name in rotated(SIDES, rep):
            side = sides[name]
            if name == "A":
                side.call("reset")
            key = run.probe_key("latency", side.queue, rep)
            paced = side.call(
                "fire_paced", listeners=1, count=count, rate=plan.latency_rate, key=key
            )
            wait_until(partial(lambda k: run.probe.llen(k) >= count, key), 120, "latencies")
            values = [float(v) * 1000 for v in run.probe.lrange(key, 0, -1)]
            if name == "A":
                run.wait_recorded(count)
            count_deliveries(memory, name, count, side)
            runs[name].append({
                "p50": percentile(values, 50), "p99": percentile(values, 99),
                "max": max(values), "achieved_rate": paced["achieved_rate"],
            })  # fmt: skip
    log(
        "  fig 3: "
        + ", ".join(
            f"{s} p50 {statistics.median(r['p50'] for r in runs[s]):.1f} ms "
            f"p99 {statistics.median(r['p99'] for r in runs[s]):.1f} ms"
            for s in SIDES
        )
    )
    return {"runs": runs, "messagios": count, "rate": plan.latency_rate}


def figure_4_recording(run: Run, sides: dict[str, Side], admin: BrokerAdmin) -> dict:
    """A's statements per fire and rows and bytes per fire and per delivery (B, C: none)."""
    a = sides["A"]
    statements = a.call("statements", listeners=list(LISTENER_COUNTS))
    sizes = a.call("recording", count=run.plan.recording_fires)
    admin.purge(a.queue)
    a.call("reset")
    outside = {n: len(s["outside"]) for n, s in statements.items()}
    log(f"  fig 4: statements per fire outside a transaction {outside}")
    return {"statements": statements, "sizes": sizes}


def figure_5_memory(run: Run, sides: dict[str, Side], memory: dict[str, Any]) -> dict:
    """Worker RSS (main process and pool) before and after ``memory_deliveries`` deliveries.

    The workers are those of figures 2 and 3, sampled after a warm-up of 2,000 deliveries
    (imports, connections and caches made once); the deliveries of figures 2 and 3 count,
    and each worker is then topped up to ``memory_deliveries``. The RSS right after the
    first deliveries is reported too.
    """
    total = run.plan.memory_deliveries
    listeners, chunk = 4, 25_000
    result: dict[str, Any] = {}
    for name in rotated(SIDES, 0):
        side, m = sides[name], memory[name]
        began = time.time()
        while m["delivered"] < total:
            count = min(chunk, total - m["delivered"]) // listeners
            if count <= 0:
                break
            if name == "A":
                side.call("reset")
            key = run.probe_key("memory", side.queue, m["delivered"])
            side.send("fire_batch", listeners=listeners, count=count, key=key)
            run.wait_hits(key, count * listeners, 900, 0.05)
            side.receive()
            if name == "A":
                run.wait_recorded(count * listeners, 300)
            m["delivered"] += count * listeners
            m["samples"].append({"deliveries": m["delivered"], "rss": sum(side.rss().values())})
        m["top_up_seconds"] = time.time() - began
        before, after = m["samples"][0]["rss"], m["samples"][-1]["rss"]
        result[name] = {"started": m["started"], "before": before, "after": after,
                        "deliveries": m["delivered"], "samples": m["samples"],
                        "top_up_seconds": m["top_up_seconds"]}  # fmt: skip
        log(
            f"  fig 5, {name}: RSS {m['started'] / 2**20:.1f} MiB at start, "
            f"{before / 2**20:.1f} MiB after warm-up, {after / 2**20:.1f} MiB after "
            f"{m['delivered']:,} deliveries ({(after - before) / before:+.1%})"
        )
    return result


def memory_baseline(run: Run, sides: dict[str, Side]) -> dict[str, Any]:
    """Warm each worker up with 2,000 deliveries and take the RSS that figure 5 starts from."""
    memory: dict[str, Any] = {}
    for name, side in sides.items():
        started = sum(side.rss().values())
        if name == "A":
            side.call("reset")
        key = run.probe_key("memory-warm", side.queue)
        side.call("fire_batch", listeners=4, count=500, key=key)
        run.wait_hits(key, 2000, 300, 0.02)
        if name == "A":
            run.wait_recorded(2000, 300)
        sample = {"deliveries": 0, "rss": sum(side.rss().values())}
        memory[name] = {"started": started, "delivered": 0, "samples": [sample]}
    return memory


def count_deliveries(memory: dict[str, Any] | None, name: str, count: int, side: Side) -> None:
    """Add deliveries a worker ran to figure 5's tally, with an RSS sample."""
    if memory is not None:
        memory[name]["delivered"] += count
        memory[name]["samples"].append(
            {"deliveries": memory[name]["delivered"], "rss": sum(side.rss().values())}
        )


def admin_at_scale() -> Any:
    """bench/admin_at_scale.py, imported the same way whether run.py runs as a script
    (``python bench/run.py``) or as a module."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bench import admin_at_scale as module

    return module


def figure_6_admin_at_scale(run: Run) -> dict:
    """The admin at 1M events / 4M deliveries: its own databases (large and small), seeded
    with COPY, every screen timed and its queries counted, the databases dropped.

    Returns ``{"screens": {name: {"seconds": s, "queries": q, "queries_small": q0, ...}},
    "seed": ..., "run": ...}``; :func:`check_targets` judges the "admin" target and
    :func:`report` renders it (see bench/admin_at_scale.py).
    """
    began = time.time()
    module = admin_at_scale()
    result = module.figure(
        run.id, run.tmp, log, events=run.admin_events or module.EVENTS, profiles=PROFILES
    )
    result["run"] = {
        "command": run.command,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "run_id": run.id,
        "load_start": run.results["machine"]["load_start"],
        "load_end": load_average(),
        "git": run.results["machine"]["git"],
        "minutes": (time.time() - began) / 60,
    }
    return result


def profiles(run: Run, sides: dict[str, Side], broker: str, admin: BrokerAdmin) -> dict:
    """pyinstrument profiles of the fire path (A and B) and of A's delivery path."""
    PROFILES.mkdir(exist_ok=True)
    written = {}
    for name in ("A", "B"):
        for listeners in (4, 16):
            path = PROFILES / f"{broker}-{name}-fire-{listeners}.txt"
            if name == "A":
                sides[name].call("reset")
            sides[name].call("profile_fire", listeners=listeners, seconds=2.0, path=str(path))
            written[f"{name}-fire-{listeners}"] = str(path.relative_to(ROOT))
    run.results["breakdown"] = sides["A"].call("breakdown", listeners=list(LISTENER_COUNTS))
    admin.purge(sides["A"].queue)
    path = PROFILES / f"{broker}-A-deliver-4.txt"
    sides["A"].call("profile_deliver", count=300, path=str(path))
    written["A-deliver-4"] = str(path.relative_to(ROOT))
    sides["A"].call("reset")
    return written


# --- One broker ------------------------------------------------------------------------------


def bench_broker(run: Run, broker: str) -> dict:
    plan = run.plan
    admin = BrokerAdmin(broker)
    sides = {name: Side(name, broker, run) for name in SIDES}
    result: dict[str, Any] = {"server": admin.server_version()}
    try:
        for side in sides.values():
            side.start_driver()
        for side in sides.values():
            side.receive()  # ready
        if 1 in plan.figures:
            result["fire"] = figure_1_fire_throughput(run, sides, admin)
        if run.profile and broker == run.brokers[0]:
            result["profiles"] = profiles(run, sides, broker, admin)
            for side in sides.values():
                admin.purge(side.queue)
        if 4 in plan.figures:
            result["recording"] = figure_4_recording(run, sides, admin)
        if {2, 3, 5} & set(plan.figures):
            sides["A"].call("reset")
            for side in sides.values():
                admin.purge(side.queue)
                side.start_worker()
            for side in sides.values():
                side.warm_worker()
            result["worker_command"] = sides["A"].worker_command
            memory = None
            if 5 in plan.figures and broker in run.memory_brokers:
                memory = memory_baseline(run, sides)
            if 2 in plan.figures:
                result["e2e"] = figure_2_end_to_end(run, sides, memory)
            if 3 in plan.figures:
                result["latency"] = figure_3_latency(run, sides, memory)
            if memory is not None:
                result["memory"] = figure_5_memory(run, sides, memory)
            for side in sides.values():
                side.stop_worker()
    finally:
        for side in sides.values():
            side.stop_worker()
            if side.driver is not None:
                side.driver.stdin.close()
                stop_process(side.driver)
        admin.delete([q for side in sides.values() for q in side.queues], run.prefix)
        admin.close()
    return result


# --- Set-up ----------------------------------------------------------------------------------


def ensure_venv_07() -> None:
    """Create bench/.venv-0.7 with messagio 0.7 from PyPI, once."""
    marker = VENV_07 / ".bench-requirements"
    wanted = "\n".join(VENV_07_REQUIREMENTS)
    if marker.exists() and marker.read_text() == wanted:
        return
    log(f"creating {VENV_07.relative_to(ROOT)} ({', '.join(VENV_07_REQUIREMENTS)})")
    subprocess.run([sys.executable, "-m", "venv", str(VENV_07)], check=True)
    pip = [str(VENV_07 / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, *VENV_07_REQUIREMENTS], check=True)
    marker.write_text(wanted)


def versions(python: str, cwd: Path) -> dict[str, str]:
    code = (
        "import json, platform, importlib.metadata as m\n"
        "out = {'python': platform.python_version()}\n"
        "for name in ('celery', 'kombu', 'django', 'redis', 'amqp', 'psycopg', 'messagio'):\n"
        "    try: out[name] = m.version(name)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    output = subprocess.run([python, "-c", code], cwd=cwd, capture_output=True, text=True)
    return json.loads(output.stdout)


def machine() -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    total = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.machine(),
    )  # fmt: skip
    git = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {"nproc": os.cpu_count(), "memory_gib": total / 2**20, "cpu": cpu,
            "kernel": platform.release(), "git": git, "load_start": load_average()}  # fmt: skip


def postgres_version() -> str:
    import psycopg

    with psycopg.connect(f"{POSTGRES}/postgres") as db:
        return db.execute("SHOW server_version").fetchone()[0]


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine skews every figure."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --- Verdicts and the report -----------------------------------------------------------------


def pair_ratios(a: list[float], b: list[float]) -> list[float]:
    """A/B run by run: the i-th runs of A and B were made back to back."""
    return [x / y for x, y in zip(a, b, strict=True)]


def check_targets(results: dict) -> dict[str, tuple[str, str]]:
    """Each target's verdict and the figures it rests on."""
    verdicts: dict[str, tuple[str, str]] = {}
    brokers = results["brokers"]

    def per_broker(
        extract: Callable[[dict], float | None], ok: Callable[[float], bool], fmt: str
    ) -> tuple[str, str] | None:
        values = {b: extract(r) for b, r in brokers.items()}
        values = {b: v for b, v in values.items() if v is not None}
        if not values:
            return None
        verdict = "PASS" if all(ok(v) for v in values.values()) else "FALL SHORT"
        return verdict, ", ".join(f"{b} {fmt.format(v)}" for b, v in values.items())

    def fire_ratio(listeners: str) -> Callable[[dict], float | None]:
        def extract(r: dict) -> float | None:
            if "fire" not in r:
                return None
            rates = r["fire"][listeners]
            return statistics.median(pair_ratios(rates["A"], rates["B"]))

        return extract

    def e2e_ratio(r: dict) -> float | None:
        if "e2e" not in r:
            return None
        rates = r["e2e"]["deliveries_per_s"]
        return statistics.median(pair_ratios(rates["A"], rates["B"]))

    def latency_ratio(r: dict) -> float | None:
        if "latency" not in r:
            return None
        runs = r["latency"]["runs"]
        return statistics.median(
            pair_ratios([x["p99"] for x in runs["A"]], [x["p99"] for x in runs["B"]])
        )

    def statements(r: dict) -> float | None:
        if "recording" not in r:
            return None
        return max(len(s["outside"]) for s in r["recording"]["statements"].values())

    def memory(r: dict) -> float | None:
        if "memory" not in r or "A" not in r["memory"]:
            return None
        m = r["memory"]["A"]
        return (m["after"] - m["before"]) / m["before"] * 100

    checks = {
        "fire4": per_broker(fire_ratio("4"), lambda v: v >= 2.0, "A/B {:.2f}"),
        "fire16": per_broker(fire_ratio("16"), lambda v: v >= 5.0, "A/B {:.2f}"),
        "e2e": per_broker(e2e_ratio, lambda v: v >= 1.5, "A/B {:.2f}"),
        "latency": per_broker(latency_ratio, lambda v: v <= 1.5, "p99 A/B {:.2f}"),
        "statements": per_broker(statements, lambda v: v <= 2, "max {:.0f}"),
        "memory": per_broker(memory, lambda v: v < 10, "{:+.1f}%"),
    }
    for target, verdict in checks.items():
        verdicts[target] = verdict or ("NOT RUN", "figure not selected in this run")
    admin = results.get("admin") or {}
    verdicts["admin"] = (
        admin_at_scale().verdict(admin)
        if admin.get("screens")
        else ("NOT RUN", "figure 6 not selected in this run (python bench/run.py --figures 6)")
    )
    return verdicts


def fmt_range(values: list[float], digits: int = 2) -> str:
    """The median, with the smallest and largest value in brackets."""
    median, low, high = statistics.median(values), min(values), max(values)
    return f"{median:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"


def report(run: Run, verdicts: dict[str, tuple[str, str]], elapsed: float) -> str:
    r = run.results
    lines = [
        "# messagio benchmarks",
        "",
        "Generated by `bench/run.py`; only the *Findings* section is written by hand (kept "
        "between its markers when the file is regenerated).",
        "",
        "- A: "
        + SIDE_NAMES["A"]
        + ", B: "
        + SIDE_NAMES["B"]
        + ", C: "
        + SIDE_NAMES["C"]
        + " (one `apply_async` per listener, pickle).",
        "- A runs with messagio's defaults: one task per group of listeners of equal "
        "priority (B and C publish one per listener), and `ASYNC_COMMIT` (its own "
        "statements commit with `synchronous_commit` off; see the README's settings). Its "
        "tables are emptied before each run, and no beat process runs its relay or prune.",
        f"- command: `{run.command}`",
        f"- date: {r['date']} (UTC), wall time {elapsed / 60:.1f} min, run id `{run.id}`",
        f"- machine: {r['machine']['nproc']} cores ({r['machine']['cpu']}), "
        f"{r['machine']['memory_gib']:.1f} GiB memory, Linux {r['machine']['kernel']}; "
        f"load average {r['machine']['load_start']} at the start, "
        f"{r['machine']['load_end']} at the end",
        f"- code: messagio at `{r['machine']['git']}`"
        + (
            f"; EXPERIMENT: A's DATABASE_URL ends `?{run.a_database_query}`"
            if run.a_database_query
            else ""
        ),
        "- A and C: " + ", ".join(f"{k} {v}" for k, v in r["versions"]["A"].items()),
        "- B: " + ", ".join(f"{k} {v}" for k, v in r["versions"]["B"].items()),
        "- servers: "
        + r["postgres"]
        + "; "
        + "; ".join(b["server"] for b in r["brokers"].values()),
        f"- workers: `-c 2 --prefetch-multiplier={run.plan.prefetch}`, one per side, same "
        "Celery settings for all (acks late, priority queues as in project/settings.py; A's "
        "tasks travel as JSON, B's and C's as pickle); A's: "
        f"`{next((b.get('worker_command', '') for b in r['brokers'].values()), '')}`",
        "- each figure: the median of the runs (min–max in brackets); A/B and A/C are "
        "computed run by run (A, B and C interleaved, in rotating order), then the median.",
        "",
        "## Targets",
        "",
        "| target | verdict | measured |",
        "| --- | --- | --- |",
    ]
    for target, (verdict, detail) in verdicts.items():
        lines.append(f"| {TARGETS[target]} | **{verdict}** | {detail} |")
    for broker, b in r["brokers"].items():
        title = BROKER_TITLES[broker]
        lines += ["", f"## {title}", ""]
        if "fire" in b:
            lines += [
                f"### 1. Fire throughput (messagios/s, no worker; {run.plan.fire_reps} runs "
                f"of {run.plan.fire_seconds:g} s each)",
                "",
                "| listeners | A | B | C | A/B | A/C |",
                "| ---: | ---: | ---: | ---: | ---: | ---: |",
            ]
            for n, rates in b["fire"].items():
                lines.append(
                    f"| {n} | "
                    + " | ".join(fmt_range(rates[s], 0) for s in SIDES)
                    + f" | {fmt_range(pair_ratios(rates['A'], rates['B']))}"
                    + f" | {fmt_range(pair_ratios(rates['A'], rates['C']))} |"
                )
            a1 = statistics.median(b["fire"]["1"]["A"])
            a16 = statistics.median(b["fire"]["16"]["A"])
            lines += ["", f"A's cost per fire, 16 listeners against 1: x{a1 / a16:.2f}."]
        if "e2e" in b:
            e = b["e2e"]
            rates = e["deliveries_per_s"]
            lines += [
                "",
                f"### 2. End-to-end throughput ({e['messagios']:,} messagios x "
                f"{e['listeners']} listeners, deliveries/s; A until every Delivery is "
                f"recorded succeeded; {len(rates['A'])} runs)",
                "",
                "| A | B | C | A/B | A/C |",
                "| ---: | ---: | ---: | ---: | ---: |",
                "| "
                + " | ".join(fmt_range(rates[s], 0) for s in SIDES)
                + f" | {fmt_range(pair_ratios(rates['A'], rates['B']))}"
                + f" | {fmt_range(pair_ratios(rates['A'], rates['C']))} |",
            ]
        if "latency" in b:
            lat = b["latency"]
            runs = lat["runs"]
            lines += [
                "",
                f"### 3. Latency, fire to listener start ({lat['messagios']} messagios at "
                f"{lat['rate']:g}/s, one listener; ms; {len(runs['A'])} runs)",
                "",
                "| | p50 | p99 | max | p99 vs A |",
                "| --- | ---: | ---: | ---: | ---: |",
            ]
            for s in SIDES:
                p99_ratio = (
                    "" if s == "A"
                    else fmt_range(pair_ratios([x["p99"] for x in runs["A"]],
                                               [x["p99"] for x in runs[s]]))
                )  # fmt: skip
                lines.append(
                    f"| {s} | {fmt_range([x['p50'] for x in runs[s]], 1)} | "
                    f"{fmt_range([x['p99'] for x in runs[s]], 1)} | "
                    f"{fmt_range([x['max'] for x in runs[s]], 1)} | "
                    + (f"A/{s} {p99_ratio}" if p99_ratio else "")
                    + " |"
                )
        if "recording" in b:
            lines += ["", *recording_lines(b["recording"])]
        if "memory" in b:
            lines += [
                "",
                "### 5. Worker memory (RSS of the main process + 2 pool processes; the workers "
                "of figures 2 and 3, topped up with 4-listener messagios)",
                "",
                "| | after first 100 deliveries | after 2,000-delivery warm-up | after N "
                "more | N | growth from warm-up | growth from first 100 |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            ]
            for s, m in b["memory"].items():
                lines.append(
                    f"| {s} | {m['started'] / 2**20:.1f} MiB | {m['before'] / 2**20:.1f} MiB | "
                    f"{m['after'] / 2**20:.1f} MiB | {m['deliveries']:,} | "
                    f"{(m['after'] - m['before']) / m['before']:+.1%} | "
                    f"{(m['after'] - m['started']) / m['started']:+.1%} |"
                )
            lines.append("")
            for s, m in b["memory"].items():
                trail = ", ".join(
                    f"{x['deliveries']:,}: {x['rss'] / 2**20:.1f}" for x in m["samples"]
                )
                lines.append(f"- {s}, RSS in MiB after deliveries: {trail}")
        if "profiles" in b:
            links = [f"[{k}]({Path(v).relative_to('bench')})" for k, v in b["profiles"].items()]
            lines += ["", "Profiles (pyinstrument): " + ", ".join(links)]
    if "breakdown" in r:
        lines += ["", *breakdown_lines(r["breakdown"])]
    lines += ["", *figure_6_lines(r.get("admin"), r["machine"], verdicts["admin"])]
    return "\n".join(lines) + "\n"


FIGURE_6_START = "<!-- figure-6:start -->"
FIGURE_6_END = "<!-- figure-6:end -->"


def figure_6_lines(admin: dict | None, machine: dict, verdict: tuple[str, str]) -> list[str]:
    """Figure 6's section, between its markers: a run without figure 6 keeps the previous
    run's section (see :func:`write_results`), so it carries its own command and date."""
    lines = [FIGURE_6_START, "## 6. Admin at scale", ""]
    if not admin or not admin.get("screens"):
        lines += [
            "Not measured by this run: `python bench/run.py --figures 6` (3 to 7 minutes) "
            "seeds 1,000,000 events and 4,000,000 deliveries and times every admin screen.",
            FIGURE_6_END,
        ]
        return lines
    module = admin_at_scale()
    meta, seed = admin["run"], admin["seed"]
    lines += [
        f"- command: `{meta['command']}`; date: {meta['date']} (UTC), run id `{meta['run_id']}`, "
        f"wall time {meta['minutes']:.1f} min of which seeding {seed['seconds'] / 60:.1f} min",
        f"- machine: {machine['nproc']} cores ({machine['cpu']}); load average "
        f"{meta['load_start']} at the start, {meta['load_end']} at the end; PostgreSQL "
        f"{admin.get('postgres', '?')}; messagio at `{meta['git']}`",
        *module.method_lines(admin),
        "",
        f"**{verdict[0]}**: {verdict[1]}.",
        "",
        *module.table_lines(admin),
        *module.notes_lines(admin),
        FIGURE_6_END,
    ]
    return lines


def breakdown_lines(breakdown: dict) -> list[str]:
    """Where A's fire time goes, stage by stage (microseconds per fire)."""
    stages = [k for k in breakdown if k not in ("1", "4", "16")]
    lines = [
        f"## Where A's fire time goes ({BROKER_TITLES[next(iter(BROKERS))]}, stage by stage, "
        "µs per fire)",
        "",
        "This machine: " + ", ".join(f"{k} {breakdown[k]:.0f} µs" for k in stages) + ".",
        "",
        "| stage | " + " | ".join(f"{n} listener(s)" for n in LISTENER_COUNTS) + " |",
        "| --- | " + " | ".join("---:" for _ in LISTENER_COUNTS) + " |",
    ]
    for stage in breakdown[str(LISTENER_COUNTS[0])]:
        lines.append(
            f"| {stage} | "
            + " | ".join(
                f"{breakdown[str(n)].get(stage, float('nan')):.0f}" for n in LISTENER_COUNTS
            )
            + " |"
        )
    return lines


def recording_lines(rec: dict) -> list[str]:
    st, sizes = rec["statements"], rec["sizes"]
    lines = [
        "### 4. Recording overhead (A; B and C write nothing)",
        "",
        "SQL statements (`CaptureQueriesContext`, BEGIN/COMMIT/SAVEPOINT not counted):",
        "",
        "| listeners | per fire, outside a transaction | per fire, in `atomic()` "
        "(incl. on commit) | per delivery (worker) |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for n, s in st.items():
        lines.append(
            f"| {n} | {len(s['outside'])} | {s['inside']} ({s['inside_before_commit']} before "
            f"commit) | {s['per_delivery']:g} |"
        )
    outside = next(iter(st.values()))["outside"]
    lines += ["", "Outside a transaction: " + "; ".join(f"`{q[:90]}…`" for q in outside) + "."]
    before, fired, delivered = sizes["before"], sizes["fired"], sizes["delivered"]
    fires, deliveries = sizes["fires"], sizes["deliveries"]

    def delta(later: dict, earlier: dict, table: str, key: str) -> int:
        return later[table][key] - earlier[table][key]

    lines += [
        "",
        f"Rows and bytes ({fires:,} fires of 4 listeners, then their {deliveries:,} deliveries "
        "run through the worker's task; bytes on disk = growth of table + indexes + TOAST):",
        "",
        "| table | rows written per fire | row versions per delivery (ins+upd) | HOT updates "
        "| row size | disk bytes per fire | disk bytes per delivery |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    total_fire = total_delivery = 0
    for table in ("messagio_event", "messagio_delivery", "messagio_attempt"):
        ins_fire = delta(fired, before, table, "inserted") / fires
        writes = (delta(delivered, fired, table, "inserted")
                  + delta(delivered, fired, table, "updated")) / deliveries  # fmt: skip
        updated = delta(delivered, fired, table, "updated")
        hot = delta(delivered, fired, table, "hot_updated")
        rows = delivered[table]["rows"]
        row_size = delivered[table]["tuple_bytes"] / rows if rows else 0
        disk_fire = delta(fired, before, table, "total_bytes") / fires
        disk_delivery = delta(delivered, fired, table, "total_bytes") / deliveries
        total_fire += disk_fire
        total_delivery += disk_delivery
        lines.append(
            f"| {table} | {ins_fire:.2f} | {writes:.2f} | "
            + (f"{hot / updated:.0%}" if updated else "–")
            + f" | {row_size:.0f} B | {disk_fire:,.0f} | {disk_delivery:,.0f} |"
        )
    lines += [
        f"| **total** | | | | | **{total_fire:,.0f}** | **{total_delivery:,.0f}** |",
        "",
        f"Deliveries run in the driver through `deliver.apply`: "
        f"{deliveries / sizes['deliver_seconds']:.0f} deliveries/s in one process.",
    ]
    return lines


FINDINGS_START = "<!-- findings:start -->"
FINDINGS_END = "<!-- findings:end -->"


def section(text: str, start: str, end: str) -> tuple[int, int] | None:
    """Where the section between the markers ``start`` and ``end`` (included) is."""
    if start not in text or end not in text:
        return None
    return text.index(start), text.index(end) + len(end)


def figure_6_section(text: str) -> tuple[int, int] | None:
    """Figure 6's section: between its markers, or (a report of before the markers) from
    its heading to the findings."""
    found = section(text, FIGURE_6_START, FIGURE_6_END)
    if found or "## 6. Admin at scale" not in text:
        return found
    begin = text.index("## 6. Admin at scale")
    end = text.index(FINDINGS_START) if FINDINGS_START in text else len(text)
    return begin, end


def admin_target_line(text: str) -> str | None:
    return next(
        (line for line in text.splitlines() if line.startswith(f"| {TARGETS['admin']} |")), None
    )


def merge(text: str, old: str, ran_brokers: bool, ran_admin: bool) -> str:
    """The report to write, given the previous one: a run of figure 6 alone changes only
    figure 6's section and target row of the previous report; a run without figure 6 keeps
    the previous figure 6 (section and target row)."""

    def replace_section(into: str, donor: str) -> str:
        mine, theirs = figure_6_section(into), figure_6_section(donor)
        if not mine or not theirs:
            return into
        block = donor[theirs[0] : theirs[1]].strip("\n")
        rest = into[mine[1] :].lstrip("\n")
        return into[: mine[0]] + block + "\n" + ("\n" + rest if rest else "")

    def replace_row(into: str, donor: str) -> str:
        mine, theirs = admin_target_line(into), admin_target_line(donor)
        return into.replace(mine, theirs) if mine and theirs else into

    if not ran_brokers and ran_admin:
        if not old or figure_6_section(old) is None:
            return text
        return replace_row(replace_section(old, text), text)
    if ran_brokers and not ran_admin and old and section(old, FIGURE_6_START, FIGURE_6_END):
        return replace_row(replace_section(text, old), old)
    return text


def write_results(text: str, path: Path, ran_brokers: bool = True, ran_admin: bool = False) -> None:
    """Write the report, keeping the hand-written findings section of the previous one, and
    figure 6 or figures 1 to 5 of the previous one when this run did not make them."""
    old = path.read_text() if path.exists() else ""
    text = merge(text, old, ran_brokers, ran_admin)
    if FINDINGS_START in text:  # the previous report, with only figure 6 replaced
        path.write_text(text)
        return
    findings = (
        f"{FINDINGS_START}\n## Findings\n\n(written by hand after a run: what the time goes "
        f"to where a target falls short, and what would close it)\n{FINDINGS_END}\n"
    )
    if FINDINGS_START in old and FINDINGS_END in old:
        start = old.index(FINDINGS_START)
        findings = old[start : old.index(FINDINGS_END) + len(FINDINGS_END)] + "\n"
    path.write_text(text + "\n" + findings)


# --- Main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="figures 1-4, smaller (< 3 min)")
    parser.add_argument(
        "--brokers", default="redis,rabbitmq", help="comma-separated: redis,rabbitmq"
    )
    parser.add_argument(
        "--figures", help="comma-separated figure numbers, e.g. 1,4; 6 runs only when asked"
    )
    parser.add_argument("--prefetch", type=int, help="worker --prefetch-multiplier (default 4)")
    parser.add_argument(
        "--profile", action=argparse.BooleanOptionalAction, default=None,
        help="write pyinstrument profiles to bench/profiles/ (default: on, off with --quick)",
    )  # fmt: skip
    parser.add_argument(
        "--memory-brokers", help="brokers figure 5 runs on (default: the first of --brokers)"
    )
    parser.add_argument(
        "--memory-deliveries", type=int, help="deliveries of figure 5 (default 100,000)"
    )
    parser.add_argument(
        "--admin-events", type=int, help="events of figure 6 (default 1,000,000; to try it out)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="default bench/RESULTS.md")
    args = parser.parse_args(argv)

    plan = QUICK if args.quick else FULL
    if args.figures:
        plan.figures = tuple(int(f) for f in args.figures.split(","))
    if args.prefetch:
        plan.prefetch = args.prefetch
    if args.memory_deliveries:
        plan.memory_deliveries = args.memory_deliveries
    profile = (not args.quick) if args.profile is None else args.profile
    if profile:
        try:
            import pyinstrument  # noqa: F401
        except ImportError:
            log("pyinstrument is not installed here: no profiles (pip install pyinstrument)")
            profile = False
    brokers = [b for b in args.brokers.split(",") if b]
    command = "python bench/run.py" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:]))

    started = time.time()
    #: Figures 1 to 5 need the brokers, B's virtualenv and the bench's database; figure 6
    #: makes its own databases and needs none of them.
    ran_brokers = bool({1, 2, 3, 4, 5} & set(plan.figures))
    if ran_brokers:
        ensure_venv_07()
    run = Run(plan, brokers, command, profile)
    run.admin_events = args.admin_events
    if args.memory_brokers:
        run.memory_brokers = [b for b in args.memory_brokers.split(",") if b]
    log(f"run {run.id}: figures {plan.figures} on {', '.join(brokers)}; logs in {run.tmp}")
    failed = False
    try:
        if ran_brokers:
            run.create_database()
        run.results.update(
            date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
            machine=machine(),
            versions={"A": versions(sys.executable, ROOT),
                      "B": versions(str(VENV_07 / "bin" / "python"), BENCH)
                      if ran_brokers else {}},
            postgres="PostgreSQL " + postgres_version(),
        )  # fmt: skip
        for broker in brokers if ran_brokers else []:
            log(f"{broker}:")
            began = time.time()
            run.results["brokers"][broker] = bench_broker(run, broker)
            log(f"{broker} done in {(time.time() - began) / 60:.1f} min")
        if 6 in plan.figures:
            run.results["admin"] = figure_6_admin_at_scale(run)
    except BaseException:
        failed = True
        raise
    finally:
        run.cleanup()
        run.drop_database()
        if not failed:
            import shutil

            shutil.rmtree(run.tmp, ignore_errors=True)
        else:
            log(f"logs kept in {run.tmp}")
    elapsed = time.time() - started
    run.results["machine"]["load_end"] = load_average()
    verdicts = check_targets(run.results)
    ran_admin = bool(run.results.get("admin", {}).get("screens"))
    write_results(report(run, verdicts, elapsed), args.output, ran_brokers, ran_admin)
    # The raw numbers beside the report (RESULTS.md -> RESULTS.json), merged like the report.
    raw = args.output.with_suffix(".json")
    results = run.results
    if raw.exists():
        previous = json.loads(raw.read_text())
        if not ran_brokers:
            results = {**previous, "admin": results.get("admin")}
        elif not ran_admin and previous.get("admin"):
            results = {**results, "admin": previous["admin"]}
    raw.write_text(json.dumps(results, indent=1, default=str))
    print()
    for target, (verdict, detail) in verdicts.items():
        if ran_brokers or target == "admin":
            print(f"{verdict:>12}  {TARGETS[target]}: {detail}")
    log(f"done in {elapsed / 60:.1f} min; results in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
