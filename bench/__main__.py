"""Run the benchmarks: ``python -m bench [names...] [--quick]``.

Each registered module has ``run(quick: bool) -> list[Result]``. The tables are
printed and written to bench/RESULTS.md, one section per module; sections of
modules not run this time are kept from the previous file.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import os
import platform
import re
import sys
import time
from pathlib import Path

from bench._util import to_markdown

# name -> module with run(quick: bool) -> list[Result]; imported only when selected,
# so a module's heavy imports (Ray, ...) cost nothing when it is not run.
BENCHMARKS: dict[str, str] = {
    "validation": "bench.validation",
    "engine": "bench.engine",
    "durability": "bench.durability",
    "cli": "bench.cli",
    "logs": "bench.logs",
    "agents": "bench.agents",
    "mcp": "bench.mcp_pool",
    "batch": "bench.batch",
    "estimates": "bench.estimates",
    "fairness": "bench.fairness",
    "resources": "bench.resources",
}

RESULTS = Path(__file__).with_name("RESULTS.md")
_SECTION = re.compile(r"<!-- bench:(?P<name>[\w.-]+) -->\n.*?<!-- /bench:(?P=name) -->\n", re.S)
_NOTES = re.compile(r"<!-- notes -->\n.*?<!-- /notes -->\n", re.S)
"""Hand-written analysis between these markers is kept when the file is rewritten."""


def machine() -> dict[str, str]:
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
    }
    if hasattr(os, "getloadavg"):
        info["load average at start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = []
    for mod in ("pydantic", "yaml", "networkx"):
        try:
            versions.append(f"{mod} {importlib.import_module(mod).__version__}")
        except Exception:  # noqa: BLE001 - informational only
            pass
    try:
        import yaml
        versions.append("libyaml " + ("yes" if hasattr(yaml, "CSafeLoader") else "no"))
    except ImportError:
        pass
    info["libraries"] = ", ".join(versions)
    return info


def _section(name: str, module, table: str, info: dict[str, str], quick: bool, seconds: float) -> str:
    doc = (module.__doc__ or "").strip().split("\n\n")
    intro = "\n\n".join(p for p in doc if p).strip()
    run_line = (f"Measured {info['date']} on {info['nproc']} CPU(s), {info['python']}"
                f"{' (--quick: few repetitions, smoke test only)' if quick else ''}; "
                f"the module took {seconds:.0f} s.")
    return (f"<!-- bench:{name} -->\n## {name}\n\n{intro}\n\n{run_line}\n\n{table}\n"
            f"<!-- /bench:{name} -->\n")


def write_results(path: Path, sections: dict[str, str], info: dict[str, str]) -> None:
    kept: dict[str, str] = {}
    notes = ""
    if path.exists():
        old = path.read_text()
        kept = {m.group("name"): m.group(0) for m in _SECTION.finditer(old)}
        m = _NOTES.search(old)
        notes = m.group(0) if m else ""
    kept.update(sections)
    order = [n for n in BENCHMARKS if n in kept] + [n for n in kept if n not in BENCHMARKS]
    head = ["# Benchmark results", "",
            "Written by `python -m bench` (`make bench`); times are wall-clock milliseconds "
            "(`time.perf_counter`) over repeated calls after warm-up: p50/p99 are nearest-rank "
            "percentiles, n is the number of timed calls. Ratios compare p50s measured in the same run.",
            "", "Machine of the latest run:", ""]
    head += [f"- {k}: {v}" for k, v in info.items()]
    body = "\n".join(kept[n] for n in order)
    path.write_text("\n".join(head) + "\n\n" + body + ("\n" + notes if notes else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="name",
                        help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    parser.add_argument("--quick", action="store_true", help="few repetitions: a smoke test, not figures")
    parser.add_argument("--output", type=Path, default=RESULTS, help="Markdown file to write (default: %(default)s)")
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    info = machine()
    print(", ".join(f"{k}: {v}" for k, v in info.items()), flush=True)
    sections: dict[str, str] = {}
    for name in args.names or list(BENCHMARKS):
        module = importlib.import_module(BENCHMARKS[name])
        print(f"\n## {name}{' (quick)' if args.quick else ''}", flush=True)
        t0 = time.perf_counter()
        results = module.run(quick=args.quick)
        seconds = time.perf_counter() - t0
        table = to_markdown(results)
        print(table, f"\n({name}: {seconds:.1f} s)", sep="\n", flush=True)
        sections[name] = _section(name, module, table, info, args.quick, seconds)
    if not args.no_write:
        write_results(args.output, sections, info)
        print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
