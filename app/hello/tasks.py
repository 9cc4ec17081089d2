"""The sample app's background jobs, with Celery as Flask's docs set it up
("Background Tasks with Celery"): a Celery app made from the Flask app's config,
whose tasks run inside the Flask app's context.

* ``slow_sum``: queued by ``POST /jobs`` and read back by ``GET /jobs/<id>``; it
  sleeps to stand for slow work, and says which release and host ran it.
* ``tick``: the periodic job, sent every ``TICK_SECONDS`` by Celery beat (the
  scheduler); it notes when and where it last ran, which the home page shows.

The broker and the result store are Redis, at ``REDIS_URL`` (flaskstack writes it
into the app's environment for ``broker: redis``). Without it the app runs as
before, and ``/jobs`` answers 503.
"""

from __future__ import annotations

import json
import socket
import time

from celery import Celery, Task, shared_task
from flask import Flask, current_app

TICK_KEY = "hello:last-tick"
TICK_SECONDS = 30.0


def celery_init_app(app: Flask) -> Celery:
    class FlaskTask(Task):
        def __call__(self, *args, **kwargs):
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(app.config["CELERY"])
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


def celery_config(redis_url: str | None) -> dict:
    return {
        "broker_url": redis_url or "memory://",
        "result_backend": redis_url or "cache+memory://",
        "result_expires": 3600,
        # A job is acknowledged when done, not when taken: one whose worker dies is run again.
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
        # A result-store connection idle this long is checked (PING) before use and opened
        # again if Redis restarted meanwhile (flaskstack restarts it when its users change);
        # without it the first job after a restart can fail with "Broken pipe".
        "redis_backend_health_check_interval": 10,
        # A broker connection that Redis' restart left dead fails within seconds and is
        # opened again (Celery retries the publish), instead of holding a request until
        # TCP gives up on it.
        "broker_transport_options": {
            "socket_timeout": 5,
            "socket_connect_timeout": 5,
            "health_check_interval": 10,
        },
        "redis_socket_timeout": 5,
        "redis_socket_connect_timeout": 5,
        "beat_schedule": {"tick": {"task": "hello.tasks.tick", "schedule": TICK_SECONDS}},
    }


def _ran_by() -> dict:
    return {"release": current_app.config["RELEASE_ID"], "host": socket.gethostname()}


@shared_task(ignore_result=False)
def slow_sum(numbers: list[int], seconds: float = 0.0) -> dict:
    started = time.time()
    time.sleep(max(0.0, float(seconds)))
    return {"sum": sum(int(n) for n in numbers), "started": started, "finished": time.time(), **_ran_by()}


@shared_task
def tick() -> None:
    """Note when and where the periodic job last ran."""
    import redis  # the broker's client, installed with celery[redis]

    client = redis.Redis.from_url(current_app.config["REDIS_URL"])
    client.set(TICK_KEY, json.dumps({"at": time.time(), **_ran_by()}), ex=3600)


def last_tick(app: Flask) -> dict | None:
    """The periodic job's last run ({at, release, host}), or None (none yet, or no broker)."""
    if not app.config.get("REDIS_URL"):
        return None
    import redis

    try:
        raw = redis.Redis.from_url(app.config["REDIS_URL"], socket_timeout=1).get(TICK_KEY)
    except redis.RedisError:
        return None
    return json.loads(raw) if raw else None
