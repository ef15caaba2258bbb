"""CPU used per process, read from /proc: where a server's CPU goes while a benchmark loads it.

Inside a private pid namespace (tuili.deploy.local.isolated) /proc lists only the benchmark's own
processes, so a snapshot before and after a load says what every one of them spent.
"""
from __future__ import annotations

import os
from collections import defaultdict

TICK = os.sysconf("SC_CLK_TCK")


def process_name(cmdline: list[str]) -> str:
    """A short, stable name: Ray's worker titles without the running method (``ray::ServeReplica:tuili:resnet18``),
    else the program, or the script / module a Python runs."""
    if not cmdline:
        return "?"
    first = cmdline[0]
    if first.startswith("ray::"):
        return first.split()[0].split(".")[0]
    name = os.path.basename(first.split()[0])
    if name.startswith("python"):
        args = [a for a in cmdline[1:] if not a.startswith("-") or a == "-m"]
        if args[:1] == ["-m"] and len(args) > 1:
            return " ".join(args[1:3])
        return os.path.basename(args[0]) if args else name
    return name


def snapshot() -> dict[int, tuple[str, float]]:
    """{pid: (name, CPU seconds so far, user + system)} of every process /proc shows."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        out[int(pid)] = (process_name(cmdline), (int(fields[11]) + int(fields[12])) / TICK)
    return out


def used(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds each named group of processes spent between two snapshots, most first."""
    by_name: dict[str, float] = defaultdict(float)
    for pid, (name, cpu) in after.items():
        by_name[name] += cpu - (before[pid][1] if pid in before else 0.0)
    return dict(sorted(by_name.items(), key=lambda kv: -kv[1]))


def table(spent: dict[str, float], seconds: float, requests: int) -> str:
    """Markdown: each group's share of a core and its CPU per request."""
    rows = ["| process | cores busy | CPU ms / request |", "|---|---:|---:|"]
    for name, cpu in [*spent.items(), ("total", sum(spent.values()))]:
        if cpu >= 0.005 * seconds or name == "total":
            per = f"{1000 * cpu / requests:.1f}" if requests else "-"
            rows.append(f"| {name} | {cpu / seconds:.2f} | {per} |")
    return "\n".join(rows)
