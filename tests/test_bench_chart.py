"""The zero-downtime benchmark's chart: the steps read from a command's timed output, and
failed requests drawn in red."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))  # the benchmarks import their helpers as scripts do

import zero_downtime  # noqa: E402

# A code-only fab deploy as fab prints it (README), with when each line arrived: the
# release tool's steps come together at the end of their command.
PREPARED = [
    "[demo] hello: upload code 0.17s",
    "[demo]   wheels   ok       0.00s  wheelhouse cp311-x86_64-c9db0e7baa54 reused",
    "[demo]   unpack   ok       0.01s  shared: instance",
    "[demo]   venv     ok       0.29s  linked from d0316d564b9b",
    "[demo] hello: release 425796b9f6a0 prepared",
    "== upload and prepare: 0.75s",
]
ACTIVATED = [
    "[demo]   check    ok       2.13s  hello:create_app() builds",
    "[demo]   migrate  ok       0.00s  skipped: migrations as when d0316d564b9b migrated",
    "[demo]   switch   ok       0.00s  current -> releases/425796b9f6a0 (was d0316d564b9b)",
    "[demo]   restart  ok       3.70s",
    "[demo]   health   ok       5.17s  GET /healthz -> 200",
    "[demo]   workers  ok       7.29s  2 restarted, settled in 4.2s; 1 timers",
    "[demo]   prune    ok              removed bd6650eb1055",
    "[demo] hello: ACTIVATED 425796b9f6a0",
    "== activate: 18.77s",
    "fab deploy: done in 21.08s",
]
LINES = [(1.0, line) for line in PREPARED] + [(20.0, line) for line in ACTIVATED]


def test_steps_are_placed_back_from_when_they_arrived():
    marks = {name: (start, end, kind) for name, start, end, kind in zero_downtime.steps(LINES)}
    assert marks["activate"] == (pytest.approx(1.23), 20.0, "phase")
    assert marks["upload and prepare"] == (pytest.approx(0.25), 1.0, "phase")
    # The last step ends when the lines arrive; each earlier one where the next begins.
    assert marks["workers"] == (pytest.approx(12.71), 20.0, "step")
    assert marks["health"] == (pytest.approx(7.54), pytest.approx(12.71), "step")
    assert marks["switch"][:2] == (pytest.approx(3.84), pytest.approx(3.84))
    assert marks["venv"] == (pytest.approx(0.71), 1.0, "step")
    assert "prune" not in marks  # no duration: not placed
    assert [m[0] for m in zero_downtime.steps(LINES) if m[3] == "step"][-6:] == [
        "check", "migrate", "switch", "restart", "health", "workers",
    ]  # fmt: skip


def red_pixels(path: Path) -> int:
    """Red pixels in the panels: below the legend (its top 0.35 inch at 90 dpi), which shows a red
    cross whatever failed."""
    import matplotlib.image

    image = matplotlib.image.imread(path)[int(0.35 * 90) + 2 :]
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    return int(((r > 0.9) & (g < 0.2) & (b < 0.2)).sum())


@pytest.mark.parametrize("failed", [0, 3])
def test_the_chart_draws_failed_requests_in_red(tmp_path, failed):
    samples = [(t / 10, 0.004, True) for t in range(-20, 220)]
    samples += [(8.0 + i / 10, 0.5, False) for i in range(failed)]
    row = {"scenario": "(a) fab deploy", "sent": len(samples), "failed": failed, "samples": samples,
           "steps": zero_downtime.steps(LINES)}  # fmt: skip
    chart = tmp_path / "chart.png"
    zero_downtime.draw([row, {**row, "scenario": "(e) fab rollback"}], chart)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (red_pixels(chart) > 0) == (failed > 0)
