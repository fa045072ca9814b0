"""messagio under load: TOTAL messagios fired by P processes at W separate worker processes.

    python bench/load.py                       # 200,000 on PostgreSQL + Redis and + RabbitMQ
    python bench/load.py --total 20000 --brokers redis

The bigger sibling of tests/integration/test_load.py. Per broker: its own PostgreSQL database
(made, migrated and dropped with bench/run.py's helpers), W workers ``celery -A project
worker -I bench.load_events`` with distinct ``-n`` names on a queue of this run's own, each a
separate process sharing only the broker and the database with the others (what separate
machines would share), and P firing processes (``python -m bench.load_fire``, each with its
own ``django.setup()``). It waits, polling with a deadline, until every Delivery is finished,
then checks exactly-once: TOTAL Events, TOTAL x L Deliveries succeeded at their first attempt,
TOTAL x L listener side effects (rows of ``bench_load_effect``), none lost, none doubled.

Printed, and appended to bench/LOAD.md: fires/s, deliveries/s, wall time, and the workers'
RSS (main process + pool children, all workers summed) at start, at 25/50/75/100 % of the
deliveries, with the growth. Everything the run made (database, queues, Redis keys,
processes) is removed at the end, also after an error or Ctrl-C; logs are kept on failure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.load_events import EFFECT_DDL, EFFECT_TABLE, MAX_LISTENERS  # noqa: E402
from bench.run import (  # noqa: E402
    BROKER_TITLES,
    BROKERS,
    QUICK,
    BrokerAdmin,
    Run,
    load_average,
    log,
    machine,
    process_tree_rss,
    stop_process,
    versions,
)

LOAD_MD = ROOT / "bench" / "LOAD.md"
TABLES = ("messagio_event", "messagio_delivery", "messagio_attempt", EFFECT_TABLE)
MILESTONES = (25, 50, 75, 100)
FINISHED = ("succeeded", "failed")
MiB = 2**20


class StalledError(RuntimeError):
    """Nothing moved for too long, a process died, or the deadline passed."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total", type=int, default=200_000, help="messagios fired in all")
    parser.add_argument("--firing-processes", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="separate worker processes")
    parser.add_argument("--concurrency", type=int, default=2, help="pool size of each worker")
    parser.add_argument("--brokers", default="redis,rabbitmq", help="comma-separated")
    parser.add_argument(
        "--listeners", type=int, default=1, choices=range(1, MAX_LISTENERS + 1),
        help="listeners per messagio (deliveries = total x listeners)",
    )  # fmt: skip
    parser.add_argument(
        "--prefetch-multiplier", type=int, default=1, help="as project/settings.py (1)"
    )
    parser.add_argument(
        "--stall-timeout", type=float, default=180,
        help="give up when no delivery finished for this many seconds",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=float,
        help="overall deadline per broker (default: 120 s + 20 ms per delivery)",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, default=LOAD_MD, help="default bench/LOAD.md")
    parser.add_argument("--no-report", action="store_true", help="do not write LOAD.md")
    args = parser.parse_args(argv)
    args.brokers = [b for b in args.brokers.split(",") if b]
    unknown = set(args.brokers) - set(BROKERS)
    if unknown:
        parser.error(f"unknown broker(s): {', '.join(sorted(unknown))}")
    if args.total < args.firing_processes:
        parser.error("--total must be at least --firing-processes")
    return args


# --- One broker ------------------------------------------------------------------------------


class LoadRun:
    """W workers and P firing processes on one broker, sharing the bench's database."""

    def __init__(self, run: Run, broker: str, args: argparse.Namespace) -> None:
        self.run, self.broker, self.args = run, broker, args
        self.queue = f"{run.prefix}-load-{broker}"
        self.queues = [self.queue, f"{self.queue}-default"]
        self.deliveries = args.total * args.listeners
        self.ready_dir = run.tmp / f"ready-{broker}"
        self.ready_dir.mkdir()
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE", "VIRTUAL_ENV")
        }
        self.env.update(
            DJANGO_SETTINGS_MODULE="project.settings",
            DJANGO_DEBUG="0",  # DEBUG keeps every query in memory: the RSS would grow
            DATABASE_URL=run.database_url,
            CELERY_BROKER_URL=BROKERS[broker],
            MESSAGIO_QUEUE=self.queue,
            CELERY_DEFAULT_QUEUE=f"{self.queue}-default",
            MESSAGIO_VAR_DIR=str(run.tmp / "var"),
            BENCH_LOAD_READY_DIR=str(self.ready_dir),
            C_FORCE_ROOT="1",  # root here (needed only where a worker accepts pickle)
            PYTHONUNBUFFERED="1",
        )
        self.workers: list[subprocess.Popen] = []
        self.worker_logs: list[Path] = []
        self.firers: list[subprocess.Popen] = []
        self.worker_command = ""
        self.partial: dict[str, Any] = {}

    # Processes ------------------------------------------------------------------------------

    def start_workers(self) -> None:
        for index in range(self.args.workers):
            name = f"{self.queue}-w{index}"
            command = [
                sys.executable, "-m", "celery", "-A", "project", "worker",
                "-I", "bench.load_events", "--loglevel=WARNING",
                f"--concurrency={self.args.concurrency}",
                f"--prefetch-multiplier={self.args.prefetch_multiplier}",
                f"--queues={self.queue}", f"--hostname={name}@%h",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
            ]  # fmt: skip
            log_path = self.run.tmp / f"worker-{name}.log"
            process = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=open(log_path, "wb"),
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            self.run.processes.append(process)
            self.workers.append(process)
            self.worker_logs.append(log_path)
            if not self.worker_command:
                self.worker_command = (
                    " ".join(shlex.quote(c) for c in ["celery", *command[3:]])
                    .replace(name, "<queue>-w<i>")
                    .replace(self.queue, "<queue>")
                )
        deadline = time.monotonic() + 120
        while True:
            self.check_workers()
            ready = {p.name for p in self.ready_dir.glob("*.ready")}
            if all(f"{w.pid}.ready" in ready for w in self.workers):
                return
            if time.monotonic() > deadline:
                raise StalledError("workers not ready after 120 s")
            time.sleep(0.1)

    def check_workers(self) -> None:
        for process, log_path in zip(self.workers, self.worker_logs, strict=True):
            if process.poll() is not None:
                raise StalledError(
                    f"worker {process.pid} exited ({process.returncode}):\n"
                    f"{log_path.read_text(errors='replace')[-3000:]}"
                )

    def start_firers(self) -> None:
        each, extra = divmod(self.args.total, self.args.firing_processes)
        for index in range(self.args.firing_processes):
            count = each + (1 if index < extra else 0)
            log_path = self.run.tmp / f"fire-{self.broker}-{index}.log"
            process = subprocess.Popen(
                [sys.executable, "-m", "bench.load_fire", f"p{index}", str(count),
                 str(self.args.listeners)],
                cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=open(log_path, "wb"),
                text=True, start_new_session=True,
            )  # fmt: skip
            self.run.processes.append(process)
            self.firers.append(process)

    def rss(self) -> dict[str, Any]:
        """RSS of every worker (main process + pool children), summed and per worker."""
        per_worker = [process_tree_rss(w.pid) for w in self.workers]
        return {
            "total": sum(sum(tree.values()) for tree in per_worker),
            "workers": [sum(tree.values()) for tree in per_worker],
            "processes": sum(len(tree) for tree in per_worker),
        }

    def stop(self) -> None:
        for process in [*self.firers, *self.workers]:
            stop_process(process)

    # Database -------------------------------------------------------------------------------

    def query(self, sql: str, params: Any = None) -> list[tuple]:
        return self.run.db.execute(sql, params).fetchall()

    def progress(self) -> tuple[int, int]:
        """Listener runs so far (the effect table's sequence) and unfinished deliveries."""
        ((last, called),) = self.query(f"SELECT last_value, is_called FROM {EFFECT_TABLE}_id_seq")
        ((unfinished,),) = self.query(
            "SELECT count(*) FROM messagio_delivery WHERE status IN ('pending', 'running', "
            "'retrying')"
        )
        return (last if called else 0), unfinished

    def statuses(self) -> dict[str, int]:
        return dict(self.query("SELECT status, count(*) FROM messagio_delivery GROUP BY status"))

    # The run --------------------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        args = self.args
        timeout = args.timeout or 120 + self.deliveries * 0.02
        self.start_workers()
        rss_start = self.rss()
        log(
            f"  {args.workers} workers ready (pids {', '.join(str(w.pid) for w in self.workers)}"
            f"), RSS {rss_start['total'] / MiB:.1f} MiB over {rss_start['processes']} processes"
        )
        launched = time.time()
        self.start_firers()
        fired: list[dict[str, Any]] = []
        samples: dict[int, dict[str, Any]] = {}
        trail: list[dict[str, Any]] = []
        peak = rss_start["total"]
        last_count, last_move = (-1, -1), time.monotonic()
        last_log = 0.0
        began = time.monotonic()
        #: What is known so far, for the report of a run that is interrupted or fails.
        self.partial = {"rss_start": rss_start, "rss": samples, "trail": trail}
        while True:
            for process in self.firers:
                if process.returncode is None and process.poll() is not None:
                    out = process.stdout.read() if process.stdout else ""
                    if process.returncode != 0:
                        raise StalledError(f"firing process {process.pid} failed: {out}")
                    fired.append(json.loads(out.strip().splitlines()[-1]))
            self.check_workers()
            # Cheap enough to poll twice a second on a big table: the side-effect table's
            # sequence (listener runs so far) and the unfinished deliveries (status index).
            ran, unfinished = self.progress()
            done_firing = len(fired) == len(self.firers)
            rss_now = self.rss()
            peak = max(peak, rss_now["total"])
            self.partial.update(
                rss_peak=peak, rss_last=rss_now["total"], listener_runs=ran,
                unfinished=unfinished, seconds=time.monotonic() - began,
            )  # fmt: skip
            for milestone in MILESTONES:
                if milestone not in samples and 100 * ran >= milestone * self.deliveries:
                    samples[milestone] = dict(rss_now, deliveries=ran)
            now = time.monotonic()
            if (ran, unfinished) != last_count:
                last_count, last_move = (ran, unfinished), now
            done = False
            if done_firing and unfinished == 0:
                counts = self.statuses()  # every fire is recorded by now: count them all
                done = sum(counts.get(s, 0) for s in FINISHED) >= self.deliveries
            if now - last_log >= 15 or done:
                last_log = now
                trail.append({"seconds": round(now - began, 1), "listener_runs": ran,
                              "unfinished": unfinished, "rss": rss_now["total"]})  # fmt: skip
                log(
                    f"  {now - began:6.0f}s: {len(fired)}/{len(self.firers)} firing processes "
                    f"done; listener runs {ran:,}/{self.deliveries:,}, deliveries unfinished "
                    f"{unfinished:,}; RSS {rss_now['total'] / MiB:.1f} MiB"
                )
            if done:
                break
            if now - last_move > args.stall_timeout:
                raise StalledError(
                    f"nothing moved for {args.stall_timeout:.0f} s: {self.statuses()}"
                )
            if now - began > timeout:
                raise StalledError(f"deadline of {timeout:.0f} s passed: {self.statuses()}")
            time.sleep(0.5)
        rss_end = self.rss()
        samples[100] = dict(rss_end, deliveries=self.progress()[0])
        self.stop()
        first_fire = min(f["started"] for f in fired)
        last_fire = max(f["ended"] for f in fired)
        (last_finished,) = self.query(
            "SELECT extract(epoch FROM max(finished_at)) FROM messagio_delivery"
        )[0]
        last_finished = float(last_finished)
        result = {
            "broker": self.broker,
            "total": args.total,
            "listeners": args.listeners,
            "deliveries": self.deliveries,
            "fire_seconds": last_fire - first_fire,
            "fires_per_s": args.total / (last_fire - first_fire),
            "deliver_seconds": last_finished - first_fire,
            "deliveries_per_s": self.deliveries / (last_finished - first_fire),
            "wall_seconds": last_finished - launched,
            "rss_start": rss_start,
            "rss": {str(k): v for k, v in sorted(samples.items())},
            "rss_peak": peak,
            "trail": trail,
            "checks": self.checks(),
        }
        return result

    def checks(self) -> dict[str, Any]:
        """Exactly once: events, deliveries (status, attempts) and side effects, counted."""
        total, deliveries = self.args.total, self.deliveries
        ((events,),) = self.query("SELECT count(*) FROM messagio_event")
        statuses = self.statuses()
        (first_attempt, delivery_events), = self.query(
            "SELECT count(*) FILTER (WHERE status = 'succeeded' AND attempts = 1), "
            "count(DISTINCT event_id) FROM messagio_delivery"
        )  # fmt: skip
        ((attempt_rows,),) = self.query("SELECT count(*) FROM messagio_attempt")
        (effects, distinct_effects), = self.query(
            f"SELECT count(*), count(DISTINCT (token, listener)) FROM {EFFECT_TABLE}"
        )  # fmt: skip
        ((worker_pids,),) = self.query(f"SELECT count(DISTINCT pid) FROM {EFFECT_TABLE}")
        lost = deliveries - distinct_effects
        duplicated = effects - distinct_effects
        ok = (
            events == total
            and statuses.get("succeeded", 0) == deliveries
            and sum(statuses.values()) == deliveries
            and first_attempt == deliveries
            and delivery_events == total
            and effects == deliveries
            and lost == 0
            and duplicated == 0
        )
        return {
            "events": events,
            "delivery_statuses": statuses, "succeeded_first_attempt": first_attempt,
            "events_with_deliveries": delivery_events, "attempt_rows": attempt_rows,
            "effects": effects, "effects_distinct": distinct_effects,
            "effect_processes": worker_pids, "lost": lost, "duplicated": duplicated,
            "events_lost": total - events, "ok": ok,
        }  # fmt: skip


def reset(run: Run) -> None:
    run.db.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")


def print_result(r: dict[str, Any]) -> None:
    c = r["checks"]
    start = r["rss_start"]["total"]
    log(
        f"{r['broker']}: {r['total']:,} fired at {r['fires_per_s']:.0f}/s "
        f"({r['fire_seconds']:.1f} s); {r['deliveries']:,} deliveries at "
        f"{r['deliveries_per_s']:.0f}/s; wall {r['wall_seconds']:.1f} s"
    )
    log(
        "  workers' RSS: start "
        + f"{start / MiB:.1f} MiB, "
        + ", ".join(f"{k}% {v['total'] / MiB:.1f} MiB" for k, v in r["rss"].items())
        + f"; growth start->100% {growth(r, 'start'):+.1%}, 25%->100% {growth(r, '25'):+.1%}"
        + f"; peak {r['rss_peak'] / MiB:.1f} MiB"
    )
    log(
        f"  events {c['events']:,}, deliveries {c['delivery_statuses']}, succeeded at attempt 1 "
        f"{c['succeeded_first_attempt']:,}, side effects {c['effects']:,} "
        f"({c['effects_distinct']:,} distinct) from {c['effect_processes']} processes; "
        f"lost {c['lost']}, duplicated {c['duplicated']}: "
        + ("EXACTLY ONCE" if c["ok"] else "FAILED")
    )


def growth(r: dict[str, Any], since: str) -> float:
    base = r["rss_start"]["total"] if since == "start" else r["rss"][since]["total"]
    return (r["rss"]["100"]["total"] - base) / base


# --- The report ------------------------------------------------------------------------------


def section(meta: dict[str, Any], results: list[dict[str, Any]]) -> str:
    m, a = meta["machine"], meta["args"]
    lines = [
        f"## {meta['date']} UTC: {a.total:,} messagios x {a.listeners} listener(s), "
        f"{a.firing_processes} firing processes, {a.workers} workers x {a.concurrency}",
        "",
        f"- command: `{meta['command']}` (run id `{meta['run_id']}`, "
        f"{meta['elapsed'] / 60:.1f} min in all)",
        f"- machine: {m['nproc']} cores ({m['cpu']}), {m['memory_gib']:.1f} GiB memory, Linux "
        f"{m['kernel']}; load average {m['load_start']} at the start, {meta['load_end']} at "
        "the end (the machine is shared: other work skews the rates)",
        f"- code: messagio at `{m['git']}`; "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"- servers: {meta['postgres']}; " + "; ".join(meta["servers"].values()),
        f"- workers: {a.workers} separate processes sharing only the broker and the database, "
        f"each `{meta['worker_command']}`",
        "- rates: fires/s from the first fire to the last (over all firing processes); "
        "deliveries/s from the first fire to the last Delivery's `finished_at`; wall time from "
        "launching the firing processes to that moment. RSS: all workers' main and pool "
        "processes, summed; start = workers ready, before any delivery.",
        "",
        "| stack | fired | fires/s | deliveries | deliveries/s | wall time | RSS start | 25% "
        "| 50% | 75% | 100% | growth start→100% | growth 25%→100% | lost | duplicated "
        "| exactly once |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: | ---: | --- |",
    ]
    for r in results:
        c = r["checks"]
        rss = [r["rss_start"]["total"], *(r["rss"][str(k)]["total"] for k in MILESTONES)]
        lines.append(
            f"| {BROKER_TITLES[r['broker']]} | {r['total']:,} | {r['fires_per_s']:.0f} | "
            f"{r['deliveries']:,} | {r['deliveries_per_s']:.0f} | {r['wall_seconds']:.1f} s | "
            + " | ".join(f"{v / MiB:.1f} MiB" for v in rss)
            + f" | {growth(r, 'start'):+.1%} | {growth(r, '25'):+.1%} | {c['lost']} | "
            f"{c['duplicated']} | {'**yes**' if c['ok'] else '**NO**'} |"
        )
    lines.append("")
    for r in results:
        c = r["checks"]
        lines.append(
            f"- {BROKER_TITLES[r['broker']]}: {c['events']:,} Events; Deliveries "
            f"{json.dumps(c['delivery_statuses'])}, {c['succeeded_first_attempt']:,} succeeded "
            f"at attempt 1; {c['attempt_rows']:,} Attempt rows; {c['effects']:,} side-effect rows "
            f"({c['effects_distinct']:,} distinct (token, listener)) written by "
            f"{c['effect_processes']} pool processes; peak RSS {r['rss_peak'] / MiB:.1f} MiB; "
            "per worker at 100%: "
            + ", ".join(f"{w / MiB:.1f} MiB" for w in r["rss"]["100"]["workers"])
        )
    cut = meta.get("interrupted")
    if cut:
        start = cut.get("rss_start", {}).get("total")
        rss = ", ".join(f"{k}% {v['total'] / MiB:.1f} MiB" for k, v in cut.get("rss", {}).items())
        lines.append(
            f"- **NOT COMPLETED** on {BROKER_TITLES[cut['broker']]}: {cut['reason']}; after "
            f"{cut.get('seconds', 0):.0f} s, {cut.get('listener_runs', 0):,} of "
            f"{cut['deliveries']:,} listener runs, {cut.get('unfinished', 0):,} deliveries "
            "unfinished (exactly-once not checked)"
            + (
                f"; workers' RSS at start {start / MiB:.1f} MiB"
                + (f", {rss}" if rss else "")
                + f", last {cut['rss_last'] / MiB:.1f} MiB "
                f"({(cut['rss_last'] - start) / start:+.1%}), peak {cut['rss_peak'] / MiB:.1f} MiB"
                if start and "rss_last" in cut
                else ""
            )
        )
    return "\n".join(lines) + "\n"


HEADER = """# messagio under load

Written by `bench/load.py` (see its docstring and bench/README.md): each run appends a
section below, newest last. Only the notes at the top are written by hand.

<!-- notes:start -->
<!-- notes:end -->
"""


def write_section(path: Path, text: str) -> None:
    current = path.read_text() if path.exists() else HEADER
    path.write_text(current.rstrip("\n") + "\n\n" + text)


# --- Main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python bench/load.py" + "".join(
        f" {shlex.quote(a)}" for a in (sys.argv[1:] if argv is None else argv)
    )

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)

    started = time.time()
    run = Run(QUICK, args.brokers, command, profile=False)
    log(
        f"load run {run.id}: {args.total:,} messagios x {args.listeners} listener(s) from "
        f"{args.firing_processes} processes at {args.workers} workers x {args.concurrency} on "
        f"{', '.join(args.brokers)}; logs in {run.tmp}"
    )
    results: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"servers": {}}
    failed = True
    try:
        run.create_database()
        run.db.execute(EFFECT_DDL)
        meta.update(
            date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
            machine=machine(),
            versions=versions(sys.executable, ROOT),
            postgres="PostgreSQL " + run.db.execute("SHOW server_version").fetchone()[0],
        )
        for broker in args.brokers:
            log(f"{BROKER_TITLES[broker]}:")
            reset(run)
            admin = BrokerAdmin(broker)
            load = LoadRun(run, broker, args)
            try:
                meta["servers"][broker] = admin.server_version()
                result = load.execute()
                meta["worker_command"] = load.worker_command
            except BaseException as exc:
                meta["worker_command"] = load.worker_command
                meta["interrupted"] = dict(
                    load.partial, broker=broker, deliveries=load.deliveries,
                    reason=f"{type(exc).__name__}: {str(exc)[:300]}",
                )  # fmt: skip
                raise
            finally:
                load.stop()
                admin.delete(load.queues, run.prefix)
                admin.close()
            print_result(result)
            results.append(result)
        failed = False
    finally:
        run.cleanup()
        run.drop_database()
        if failed:
            log(f"logs kept in {run.tmp}")
        else:
            shutil.rmtree(run.tmp, ignore_errors=True)
        meta.update(
            args=args, command=command, run_id=run.id, elapsed=time.time() - started,
            load_end=load_average(),
        )  # fmt: skip
        # A run cut short still reports what it measured (and says so), if it got going.
        if not args.no_report and "date" in meta and (not failed or "interrupted" in meta):
            write_section(args.output, section(meta, results))
            args.output.with_suffix(".json").write_text(
                json.dumps({"meta": {**meta, "args": vars(args)}, "results": results},
                           indent=1, default=str)
            )  # fmt: skip
            log(f"results appended to {args.output}")
    return 0 if all(r["checks"]["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
