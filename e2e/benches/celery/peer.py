"""The peer of `make bench`: the same job as Thygon's, done by Celery 5 on the same RabbitMQ and
PostgreSQL, so each figure can be printed beside Celery's (issue 17).

The job, as Thygon does it: a trigger inserts a run row and publishes it; each step writes a
step row and updates the run row; the last step completes the run. Celery's defaults are
kept (it acks a task as it starts it, before the step's writes, and publishes without
confirms): what a team choosing between the two would run.

    python peer.py setup     (a fresh schema in PEER_DATABASE_URL's database)
    python peer.py worker  --queue Q --pool prefork|threads --concurrency 2
    python peer.py throughput --queue Q --steps 1 --runs 3000
    python peer.py latency    --queue Q --steps 1 --rate 100 --runs 500
    python peer.py cleanup    --queue Q

Each driver command prints one JSON line. PEER_DATABASE_URL (a database of its own, made
and emptied by `setup`) and PEER_AMQP_URL say where the servers are; both default to the
loopback ones.
"""

import argparse
import json
import os
import sys
import threading
import time
import uuid

import psycopg
from celery import Celery

DATABASE_URL = os.environ.get(
    "PEER_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/thygon_celery_peer"
)
AMQP_URL = os.environ.get("PEER_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")

app = Celery("peer", broker=AMQP_URL)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

SCHEMA = """
DROP TABLE IF EXISTS step_runs;
DROP TABLE IF EXISTS runs;
CREATE TABLE runs (
    id text PRIMARY KEY,
    status text NOT NULL,
    steps int NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at timestamptz,
    updated_at timestamptz,
    completed_at timestamptz
);
CREATE TABLE step_runs (
    run_id text NOT NULL REFERENCES runs (id),
    idx int NOT NULL,
    status text NOT NULL,
    output jsonb NOT NULL,
    completed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (run_id, idx)
);
"""

_local = threading.local()


def connection():
    """One connection per worker thread or process, opened on first use."""
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(DATABASE_URL, autocommit=False)
        _local.conn = conn
    return conn


@app.task(name="peer.step")
def step(run_id, index, steps):
    """Step `index` of `steps`: its row, the run row's update, then the next step or the end."""
    conn = connection()
    with conn.transaction():
        conn.execute(
            "INSERT INTO step_runs (run_id, idx, status, output) VALUES (%s, %s, 'COMPLETED', %s)",
            (run_id, index, json.dumps({"ok": True, "step": index})),
        )
        if index + 1 < steps:
            conn.execute(
                "UPDATE runs SET status = 'RUNNING', updated_at = clock_timestamp(),"
                " started_at = coalesce(started_at, clock_timestamp()) WHERE id = %s",
                (run_id,),
            )
        else:
            conn.execute(
                "UPDATE runs SET status = 'COMPLETED', updated_at = clock_timestamp(),"
                " started_at = coalesce(started_at, clock_timestamp()),"
                " completed_at = clock_timestamp() WHERE id = %s",
                (run_id,),
            )
    if index + 1 < steps:
        step.apply_async((run_id, index + 1, steps), queue=step.request.delivery_info["routing_key"])


def setup():
    admin = DATABASE_URL.rsplit("/", 1)[0] + "/postgres"
    name = DATABASE_URL.rsplit("/", 1)[1].split("?")[0]
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute(SCHEMA)


def trigger(conn, queue, steps):
    """What Thygon's trigger does: insert the run row, then publish its first step."""
    run_id = str(uuid.uuid4())
    with conn.transaction():
        conn.execute("INSERT INTO runs (id, status, steps) VALUES (%s, 'PENDING', %s)", (run_id, steps))
    step.apply_async((run_id, 0, steps), queue=queue)
    return run_id


def wait_done(conn, ids, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = conn.execute(
            "SELECT count(*) FROM runs WHERE id = ANY(%s) AND status <> 'COMPLETED'", (ids,)
        ).fetchone()[0]
        conn.commit()
        if left == 0:
            return
        time.sleep(0.05)
    sys.exit(f"peer: {left} of {len(ids)} runs did not complete within {timeout}s")


def throughput(args):
    """Runs/s end to end: `runs` triggered at once by 4 clients, first trigger to last completion."""
    conn = psycopg.connect(DATABASE_URL)
    started = time.monotonic()
    ids, lock = [], threading.Lock()

    def client(n):
        c = psycopg.connect(DATABASE_URL, autocommit=False)
        mine = [trigger(c, args.queue, args.steps) for _ in range(n)]
        with lock:
            ids.extend(mine)

    clients = [threading.Thread(target=client, args=(args.runs // 4 + (i < args.runs % 4),)) for i in range(4)]
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    wait_done(conn, ids, 600)
    took = time.monotonic() - started
    print(json.dumps({"runs": len(ids), "steps": args.steps, "seconds": round(took, 3),
                      "runs_per_s": round(len(ids) / took, 1)}))


def latency(args):
    """Trigger-to-completion at a steady rate, from the database's own timestamps."""
    conn = psycopg.connect(DATABASE_URL, autocommit=False)
    interval = 1.0 / args.rate
    ids = []
    next_at = time.monotonic()
    for _ in range(args.runs):
        now = time.monotonic()
        if now < next_at:
            time.sleep(next_at - now)
        next_at += interval
        ids.append(trigger(conn, args.queue, args.steps))
    wait_done(conn, ids, 600)
    rows = conn.execute(
        "SELECT extract(epoch FROM completed_at - created_at) * 1000 FROM runs WHERE id = ANY(%s)"
        " ORDER BY 1", (ids,)).fetchall()
    ms = [float(r[0]) for r in rows]

    def pct(p):
        return round(ms[min(len(ms) - 1, int(p / 100 * len(ms)))], 2)

    print(json.dumps({"runs": len(ms), "steps": args.steps, "rate": args.rate,
                      "p50_ms": pct(50), "p99_ms": pct(99),
                      "mean_ms": round(sum(ms) / len(ms), 2)}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup")
    c = sub.add_parser("cleanup")
    c.add_argument("--queue", required=True)
    w = sub.add_parser("worker")
    w.add_argument("--queue", required=True)
    w.add_argument("--pool", choices=["prefork", "threads"], default="prefork")
    w.add_argument("--concurrency", type=int, default=2)
    for name in ["throughput", "latency"]:
        d = sub.add_parser(name)
        d.add_argument("--queue", required=True)
        d.add_argument("--steps", type=int, default=1)
        d.add_argument("--runs", type=int, default=1000)
        d.add_argument("--rate", type=float, default=100)
    args = parser.parse_args()
    if args.command == "setup":
        setup()
    elif args.command == "cleanup":
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(args.queue)
    elif args.command == "worker":
        argv = ["worker", "--loglevel", "WARNING", "--queues", args.queue,
                "--pool", args.pool, "--concurrency", str(args.concurrency)]
        if args.pool == "prefork":
            # One worker alone on its queue: nothing to gossip with. The threads pool needs the
            # heartbeat's timer: without it, it stops taking tasks after its prefetch.
            argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        app.worker_main(argv)
    elif args.command == "throughput":
        throughput(args)
    else:
        latency(args)


if __name__ == "__main__":
    main()
