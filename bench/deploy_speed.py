"""Deploy speed: how long each way of putting a release live takes, without load.

Run it with `make bench` (after `make demo`). Against the demo target over SSH:

  fab deploy, code only       a new release, same requirements (wheelhouse and venv reused)
  fab deploy, same release    nothing to do
  fab rollback                back to the previous release
  fab deploy, new requirement the wheelhouse is rebuilt and uploaded, the venv installed
  ansible-playbook site.yml   a full run that puts the inventory's release back
  ansible-playbook site.yml   a second run: nothing to do

Each timed command runs RUNS times (new code each time where it must differ);
the median and the range are printed. Target: a code-only `fab deploy` under 10 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from appvariants import adds_requirement, variant

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
FAB, PLAYBOOK = str(BIN / "fab"), str(BIN / "ansible-playbook")
TARGET_SECONDS = 10.0
# site.yml puts the inventory's release back after newer fab deploys: on purpose, so asked for.
BACK = ["-e", "app_allow_older=true"]


def timed(argv: list[str]) -> float:
    start = time.monotonic()
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    took = time.monotonic() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{(result.stdout + result.stderr)[-3000:]}")
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (default 3)")
    args = parser.parse_args()
    stamp = time.strftime("%H%M%S")
    deploy = [FAB, "deploy", "--app", "hello", "--src"]
    rows = []
    timed([PLAYBOOK, "site.yml", "-i", "inventory/local", *BACK])  # start from the inventory's release
    with tempfile.TemporaryDirectory(prefix="flaskstack-speed-") as tmp:
        work = Path(tmp)
        code = [timed([*deploy, str(variant(work, f"code-{stamp}-{n}"))]) for n in range(args.runs)]
        rows.append(("fab deploy, code only", code))
        last = str(work / f"code-{stamp}-{args.runs - 1}")
        rows.append(("fab deploy, same release", [timed([*deploy, last]) for _ in range(args.runs)]))
        rows.append(("fab rollback", [timed([FAB, "rollback"]) for _ in range(args.runs)]))
        # A requirement added: a new wheelhouse (pip download on this machine, upload, install).
        # `six` is small, pure Python and has no dependencies.
        new_requirement = variant(work, f"req-{stamp}", adds_requirement("six==1.17.0"))
        rows.append(("fab deploy, new requirement", [timed([*deploy, str(new_requirement)])]))
        full = []
        for n in range(args.runs):
            full.append(timed([PLAYBOOK, "site.yml", "-i", "inventory/local", *BACK]))
            if n < args.runs - 1:  # put a fab release live again, so the next run has a switch to make
                timed([*deploy, last])
        rows.append(("ansible-playbook site.yml, full deploy", full))
        again = timed([PLAYBOOK, "site.yml", "-i", "inventory/local", *BACK])
        rows.append(("ansible-playbook site.yml, nothing to do", [again]))

    print(f"flaskstack deploy speed (demo target over SSH, {len(code)} runs where it says, no load)")
    print(f"{'what':<44} {'median s':>9} {'min s':>7} {'max s':>7} {'runs':>5}")
    for name, times in rows:
        median, low, high = statistics.median(times), min(times), max(times)
        print(f"{name:<44} {median:>9.2f} {low:>7.2f} {high:>7.2f} {len(times):>5}")
    met = statistics.median(code) < TARGET_SECONDS
    print(f"\ncode-only fab deploy under {TARGET_SECONDS:.0f} s: {'yes' if met else 'NO'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
