"""Sample Tollgate's processes with py-spy during one case.

py-spy runs with ``--nonblocking`` (it reads the target's memory without
stopping it), so the case's numbers stay close to an unprofiled run. The
collapsed stacks are summarised into the functions with the largest self and
inclusive share of samples, written next to the run's logs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench.cases import Case

PROFILED = ("ingress", "policy")
SAMPLE_RATE_HZ = 250
TOP = 15
_LOCATION = re.compile(r"\s*\((?P<file>[^:()]+)(?::\d+)?\)$")


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def parse_collapsed(text: str) -> list[tuple[list[str], int]]:
    """Stacks of py-spy's raw (collapsed) output: root first, with counts."""
    stacks = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        frames, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        stacks.append(([_short(f) for f in frames.split(";")], int(count)))
    return stacks


def _short(frame: str) -> str:
    """``func (path/to/module.py:12)`` -> ``func (module.py)``."""
    match = _LOCATION.search(frame)
    if match is None:
        return frame
    name = frame[: match.start()].strip()
    return f"{name} ({Path(match['file']).name})"


def top_costs(
    stacks: list[tuple[list[str], int]], top: int = TOP
) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """(samples, top self shares, top inclusive shares)."""
    total = sum(count for _, count in stacks)
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        if not frames:
            continue
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return 0, [], []
    return (
        total,
        [(name, n / total) for name, n in own.most_common(top)],
        [(name, n / total) for name, n in inclusive.most_common(top)],
    )


class Sampler:
    """py-spy on the ingress and the policy service for one case."""

    def __init__(self, pids: dict[str, int], work_dir: Path, case: Case) -> None:
        self.pids = {name: pids[name] for name in PROFILED if name in pids}
        self.dir = work_dir / "profile"
        self.case = case
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def output(self, name: str) -> Path:
        slug = self.case.name.replace(" ", "-").replace("/", "")
        return self.dir / f"{name}-{slug}.txt"

    def start(self, duration_s: float) -> None:
        binary = py_spy()
        if binary is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            self.processes[name] = subprocess.Popen(
                [
                    binary,
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(max(1, int(duration_s))),
                    "--rate",
                    str(SAMPLE_RATE_HZ),
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--output",
                    str(self.output(name)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def finish(self) -> str:
        """Wait for py-spy, write the summaries; return a note for the report."""
        if not self.processes:
            return "profile not taken: py-spy is not installed"
        summaries = []
        for name, process in self.processes.items():
            process.wait(timeout=120)
            path = self.output(name)
            if not path.exists():
                summaries.append(f"{name}: no profile written")
                continue
            total, own, inclusive = top_costs(parse_collapsed(path.read_text()))
            summary = path.with_suffix(".summary.md")
            summary.write_text(render(name, self.case, total, own, inclusive))
            summaries.append(f"{name}: {summary}")
        return f"profile of {self.case.name}: " + "; ".join(summaries)


def render(
    name: str,
    case: Case,
    total: int,
    own: list[tuple[str, float]],
    inclusive: list[tuple[str, float]],
) -> str:
    lines = [f"# {name}, {case.name}: {total} samples", "", "## Self", ""]
    lines += [f"- {share * 100:5.1f}% {frame}" for frame, share in own]
    lines += ["", "## Inclusive", ""]
    lines += [f"- {share * 100:5.1f}% {frame}" for frame, share in inclusive]
    return "\n".join(lines) + "\n"
