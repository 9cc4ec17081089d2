"""Bounded HTTP load on a test target's nginx (127.0.0.1 only; the demo's 8080 unless told),
for the benchmarks and the fault tests: client threads at a fixed pace on keep-alive
connections, at most MAX_SECONDS (or the seconds given) and MAX_REQUESTS, counting failed
requests (a non-2xx answer or a connection error) and latencies.

nginx closes idle keep-alive connections when it reloads (a new site, a new
certificate): a request sent on one as it closes gets no answer at all. As
browsers do (RFC 9112, 9.3.1), such a request (on a reused connection, nothing
received) is sent again once on a new connection, and counted in `retried`; any
answer that is not 2xx, and any other error, is a failure."""

from __future__ import annotations

import http.client
import json
import ssl
import statistics
import threading
import time
from dataclasses import dataclass, field

HOST, PORT = "127.0.0.1", 8080
MAX_SECONDS = 180
MAX_REQUESTS = 200_000


@dataclass
class Load:
    """Client threads sending GET requests at a fixed pace until stopped."""

    clients: int
    rate: float  # requests per second per client
    path: str = "/"
    port: int = PORT
    tls: bool = False  # HTTPS (a self-signed certificate: not checked)
    seconds: float = MAX_SECONDS  # the load stops by itself after this long
    # Each request: when it was sent (time.monotonic()), its latency in seconds, and whether it
    # succeeded.
    samples: list[tuple[float, float, bool]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    sent: int = 0
    retried: int = 0

    def __post_init__(self):
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]

    @property
    def latencies(self) -> list[float]:
        return [latency for _, latency, _ in self.samples]

    def start(self) -> Load:
        self.deadline = time.monotonic() + self.seconds
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _client(self) -> None:
        conn = None
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not self._stop.is_set() and time.monotonic() < self.deadline:
            with self._lock:
                if self.sent >= MAX_REQUESTS:
                    return
                self.sent += 1
            start, ok = time.monotonic(), True
            try:
                reused = conn is not None
                if conn is None:
                    conn = self._connect()
                try:
                    response = self._get(conn)
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                    if not reused:
                        raise
                    conn.close()
                    conn = self._connect()
                    with self._lock:
                        self.retried += 1
                    response = self._get(conn)
                if not 200 <= response.status < 300:
                    ok = False
                    self._fail(f"HTTP {response.status}")
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                ok = False
                self._fail(f"{type(exc).__name__}: {exc}")
                if conn is not None:
                    conn.close()
                conn = None
            with self._lock:
                self.samples.append((start, time.monotonic() - start, ok))
            next_at += interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _connect(self) -> http.client.HTTPConnection:
        if self.tls:
            # "localhost" (loopback), not 127.0.0.1: TLS sends the name (SNI) only for a name, and
            # nginx refuses a handshake without one. The certificate is the target's self-signed one.
            context = ssl._create_unverified_context()  # noqa: S323
            return http.client.HTTPSConnection("localhost", self.port, timeout=30, context=context)
        return http.client.HTTPConnection(HOST, self.port, timeout=30)

    def _get(self, conn: http.client.HTTPConnection) -> http.client.HTTPResponse:
        conn.request("GET", self.path, headers={"Host": "localhost"})
        response = conn.getresponse()
        response.read()
        return response

    def _fail(self, what: str) -> None:
        with self._lock:
            self.failures.append(what)


def live_release(port: int = PORT) -> str:
    """The release a target's /healthz names (the demo's unless told)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    conn.request("GET", "/healthz", headers={"Host": "localhost"})
    return json.loads(conn.getresponse().read())["release"]


def percentile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1]
        if len(values) > 1
        else 0.0
    )
