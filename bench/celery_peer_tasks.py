"""The OMS's delivery path today, for bench/celery_peer.py: a Celery 5 app on a Redis broker, delivering
with ``requests`` the way dj-whisperer does (see shared/anchors/oms-webhooks.md). Imported by the Celery
workers that the benchmark starts (``celery -A celery_peer_tasks worker``) and by its producer.

What is kept from dj-whisperer, so the comparison is with the real thing:

- one task per (event, webhook), ``acks_late=True`` (a task is acknowledged after it ran, so a dead worker's
  task is delivered again), ``bind=True``, at most ``TASK_RETRY_COUNT`` = 10 retries, each with
  ``self.retry(countdown=...)`` from the webhook's retry countdown config (exponential, base 2);
- a Redis lock per task around the attempt (dj-whisperer takes a cache lock so that a task delivered twice
  by the broker is not attempted twice at once);
- the attempt: the JSON body, ``Content-Type``, ``X-Whisperer-Event``, ``X-Whisperer-Signature`` (hex
  HMAC-SHA256 of the body, computed in the task), the additional headers, a POST with ``requests`` and a
  10 s timeout;
- success is a 2xx; anything else or an exception is retried.

Changed or left out, each of which only flatters Celery: the POST goes through one kept-alive
``requests.Session`` per worker thread (dj-whisperer posts without a session kept between tasks, so a new
connection per attempt); dj-whisperer reads the webhook row and writes a ``WebhookEvent`` row to PostgreSQL
for every attempt, and an ``EventQueue`` row before enqueueing, while here the only bookkeeping is one Redis
``INCR`` per delivered task (how the benchmark sees that the work is done). So the figures are the peer at
its best, not at its most faithful.

Settings come from the environment: ``PEER_BROKER_URL`` (``redis://127.0.0.1:PORT/0``, loopback only) and
``PEER_SECRET`` (the signing secret).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from typing import Any

import redis
import requests
from celery import Celery

TASK_RETRY_COUNT = 10
REQUEST_TIMEOUT_SECONDS = 10
DONE_KEY = "peer:delivered"
LOCK_SECONDS = 60

BROKER_URL = os.environ.get("PEER_BROKER_URL", "redis://127.0.0.1:6379/0")
if not BROKER_URL.startswith(("redis://127.0.0.1:", "unix://")):
    raise RuntimeError(f"the peer benchmark's broker must be on loopback, not {BROKER_URL!r}")
SECRET = os.environ.get("PEER_SECRET", "").encode()

app = Celery("celery_peer_tasks", broker=BROKER_URL)
app.conf.update(
    task_acks_late=True,
    task_ignore_result=True,  # dj-whisperer's tasks return nothing anyone reads
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_redis: redis.Redis | None = None
_local = threading.local()


def _cache() -> redis.Redis:
    """The per-process Redis client for the lock and the delivered counter (made after a prefork fork)."""
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(BROKER_URL)
    return _redis


def _session() -> requests.Session:
    """This worker thread's kept-alive session (never a proxy from the environment: loopback only)."""
    session: requests.Session | None = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
        session.trust_env = False
    return session


def countdown(retries: int) -> int:
    """dj-whisperer's ``exponential`` choice with ``{"base": 2}``: ``base ** n`` seconds for retry n."""
    return int(2**retries)


@app.task(bind=True, acks_late=True, max_retries=TASK_RETRY_COUNT, name="peer.deliver")
def deliver(self: Any, url: str, event_type: str, body: str, extra_headers: dict[str, str]) -> None:
    """Deliver one event to one webhook; retried on the countdown until ``TASK_RETRY_COUNT``."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"the peer benchmark only delivers to 127.0.0.1, not {url!r}")
    cache = _cache()
    lock = f"peer:lock:{self.request.id}"
    if not cache.set(lock, 1, nx=True, ex=LOCK_SECONDS):
        return  # the same task is being attempted elsewhere
    try:
        data = body.encode()
        headers = {"Content-Type": "application/json", "X-Whisperer-Event": event_type}
        if SECRET:
            digest = hmac.new(SECRET, data, hashlib.sha256).hexdigest()
            headers["X-Whisperer-Signature"] = f"sha256={digest}"
        headers.update(extra_headers)
        try:
            response = _session().post(url, data=data, headers=headers, timeout=REQUEST_TIMEOUT_SECONDS)
        except requests.RequestException as exc:
            raise self.retry(exc=exc, countdown=countdown(self.request.retries)) from exc
        if not 200 <= response.status_code < 300:
            raise self.retry(countdown=countdown(self.request.retries))
        cache.incr(DONE_KEY)
    finally:
        cache.delete(lock)
