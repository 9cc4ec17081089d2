"""Workers: what background jobs cost a deploy, and how long a job takes through the broker.

Run it with `make bench` (after `make demo`). Against the demo target (the sample app
with a Celery worker, Celery beat and Redis on the same host), through nginx on
127.0.0.1:8080:

  job latency          JOBS jobs queued one at a time by POST /jobs (no sleep in the job):
                       queued -> started by a worker (the worker's own clock: the same
                       kernel's), and queued -> result read back by GET /jobs/<id>
  fab deploy, idle     a code-only deploy while no job runs: total, and its workers step
  fab deploy, busy     the same while a JOB_SECONDS job runs: the workers step waits for it

Bounded: at most JOBS + 2 jobs, each GET poll 20 ms apart, every wait capped. Prints a table.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from appvariants import variant

ROOT = Path(__file__).resolve().parent.parent
FAB = str(ROOT / ".venv" / "bin" / "fab")
URL = "http://127.0.0.1:8080"
JOB_SECONDS = 10


def post_job(numbers: list[int], seconds: float = 0) -> tuple[str, float]:
    body = json.dumps({"numbers": numbers, "seconds": seconds}).encode()
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(URL + "/jobs", data=body, method="POST", headers=headers)  # noqa: S310 - http
    sent = time.time()
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - http://127.0.0.1 only
        return json.loads(response.read())["id"], sent


def wait_result(job: str, limit: float = 30) -> dict:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{URL}/jobs/{job}", timeout=10) as response:  # noqa: S310 - http only
            body = json.loads(response.read())
        if body["state"] == "SUCCESS":
            return body
        if body["state"] == "FAILURE":
            sys.exit(f"job {job} failed: {body}")
        time.sleep(0.02)
    sys.exit(f"job {job} not done after {limit} s")


def deploy(src: Path) -> tuple[float, float]:
    start = time.monotonic()
    result = subprocess.run([FAB, "deploy", "--app", "hello", "--src", str(src)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    took = time.monotonic() - start
    if result.returncode != 0:
        sys.exit(f"fab deploy failed:\n{(result.stdout + result.stderr)[-3000:]}")
    workers = float(re.search(r"\]\s+workers\s+ok\s+(\d+\.\d+)s", result.stdout).group(1))
    return took, workers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=30, help="jobs for the latency figures (default 30)")
    args = parser.parse_args()
    started, done = [], []
    for n in range(args.jobs):
        job, sent = post_job([n, 1])
        result = wait_result(job)
        started.append(result["result"]["started"] - sent)
        done.append(time.time() - sent)
    stamp = time.strftime("%H%M%S")
    with tempfile.TemporaryDirectory(prefix="flaskstack-workers-") as tmp:
        idle = deploy(variant(Path(tmp), f"idle-{stamp}"))
        long_job, _ = post_job([1], JOB_SECONDS)
        time.sleep(1)  # taken by the worker
        busy = deploy(variant(Path(tmp), f"busy-{stamp}"))
        finished = wait_result(long_job, JOB_SECONDS + 30)

    def p95(values: list[float]) -> float:
        return sorted(values)[max(0, int(0.95 * len(values)) - 1)]

    ms = [1000 * x for x in started]
    ms_done = [1000 * x for x in done]
    rows = [
        (
            f"job queued -> started (median, p95; {args.jobs} jobs)",
            f"{statistics.median(ms):.1f} ms, {p95(ms):.1f} ms",
        ),
        (
            "job queued -> result read back (median, p95)",
            f"{statistics.median(ms_done):.1f} ms, {p95(ms_done):.1f} ms",
        ),
        ("fab deploy, no job running (total; workers step)", f"{idle[0]:.2f} s; {idle[1]:.2f} s"),
        (
            f"fab deploy, a {JOB_SECONDS} s job running (total; workers step)",
            f"{busy[0]:.2f} s; {busy[1]:.2f} s",
        ),
        ("that job, after the deploy", f"{finished['state']} on {finished['result']['release']}"),
    ]
    print(f"{'measure':<58} figure")
    for name, figure in rows:
        print(f"{name:<58} {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
