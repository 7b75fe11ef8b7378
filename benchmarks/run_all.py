"""``make bench``: run the benchmarks of this folder, the quick ones by default, as a smoke test of each.

Why: every script here documents its full-size command in its docstring and in docs/benchmarks.md
(those numbers take from minutes to hours on 2 CPU cores). This runner keeps them all *runnable*:
by default it runs each **quick** benchmark with small arguments, one after the other (they time
things: running two at once would measure the contention), each in its own process with a
timeout, and writes its JSON into ``benchmarks/results/run_all/`` (never over the documented
full-size results in ``benchmarks/results/``), plus ``summary.json`` (command, exit status, wall
seconds of each).

Quick (default; wall time measured on the 2-core development VM under load, 2026-12-03: 7.3 min in all
without metalearning_curve, added later):

=======================  =================================================================  ======
name                     small arguments                                                     about
=======================  =================================================================  ======
overhead                 ``bench_overhead.py --at 20 --window 5 --meta-train-epochs 2``      53 s
step                     ``bench_step.py --model test_vit --dataset digits --per-class 30    200 s
                         --repeats 1``
controller_overhead      ``bench_controller_overhead.py --budget 30 --workers 1              116 s
                         --max-epochs 2``
data_s3                  ``bench_data_s3.py --per-class 20 --size 16 --workers 4``           20 s
pretrained_vs_random     ``pretrained_vs_random.py --datasets digits --per-class 20          52 s
                         --epochs 1 --image-size 32``
metalearning_curve       ``bench_metalearning_curve.py --max-tasks 3 --orders 1 --seeds 1    69 s
                         --meta-train-epochs 1 --steps-per-epoch 10 --budget-multiple 1``
                         (measured alone, load 6, 2026-12-03 14:56 UTC)
=======================  =================================================================  ======

Long (only with ``--all``; at their documented sizes):

- ``heldout_searches``: real 4-minute searches, 2 held-out datasets x 2 optimizers x 4 seeds
  (~35 min; datasets imported from the packages first);
- ``regret``: ``bench_regret.py --seeds 10 --jobs 2`` on the synthetic table (and the
  MedQuickTune one when ``../shared/tables/medqt_portfolio.parquet`` exists): hours.
  Its docs section and plots go to ``benchmarks/results/run_all/regret/``, not ``docs/``.

    .venv/bin/python benchmarks/run_all.py             # quick ones
    .venv/bin/python benchmarks/run_all.py --list      # what would run, and nothing else
    .venv/bin/python benchmarks/run_all.py --only step --only overhead
    .venv/bin/python benchmarks/run_all.py --all       # + the long ones (hours)

Exit status: 0 when every benchmark that ran exited 0, else 1 (the summary says which failed).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable


@dataclass(frozen=True)
class Bench:
    """One benchmark run: its script, its arguments (given the JSON path it writes) and its size."""

    name: str
    script: str
    args: Callable[[Path, Path], list[str]]  # (json out, scratch folder) -> arguments
    long: bool = False
    timeout_s: float = 900.0
    about: str = ""


def _heldout_args(out: Path, scratch: Path) -> list[str]:
    data = []
    for name, per_class, size in (("animal-mnist", 60, None), ("emoji", 70, 32)):
        dest = scratch / "heldout" / name
        if not dest.exists():
            cmd = [PY, "-m", "quicktune.cli", "data", "import", name, str(dest), "--max-per-class", str(per_class)]
            subprocess.run(cmd + (["--size", str(size)] if size else []), check=True, cwd=ROOT)
        data += ["--data", f"{name}={dest}"]
    return [*data, "--budget", "4m", "--seeds", "0,1,2,3", "--out", str(out)]


BENCHES: tuple[Bench, ...] = (
    Bench(
        "overhead",
        "bench_overhead.py",
        lambda out, _: ["--at", "20", "--window", "5", "--meta-train-epochs", "2", "--out", str(out)],
        timeout_s=600,
        about="53 s",
    ),
    Bench(
        "step",
        "bench_step.py",
        lambda out, scratch: [
            "--model",
            "test_vit",
            "--dataset",
            "digits",
            "--per-class",
            "30",
            "--repeats",
            "1",
            "--workdir",
            str(scratch / "step"),
            "--out",
            str(out),
        ],
        timeout_s=900,
        about="200 s",
    ),
    Bench(
        "controller_overhead",
        "bench_controller_overhead.py",
        lambda out, _: ["--budget", "30", "--workers", "1", "--max-epochs", "2", "--out", str(out)],
        timeout_s=600,
        about="116 s",
    ),
    Bench(
        "data_s3",
        "bench_data_s3.py",
        lambda out, _: ["--per-class", "20", "--size", "16", "--workers", "4", "--out", str(out)],
        timeout_s=600,
        about="20 s",
    ),
    Bench(
        "pretrained_vs_random",
        "pretrained_vs_random.py",
        lambda out, scratch: [
            "--datasets",
            "digits",
            "--per-class",
            "20",
            "--epochs",
            "1",
            "--image-size",
            "32",
            "--workdir",
            str(scratch / "pvr"),
            "--out",
            str(out),
        ],
        timeout_s=900,
        about="52 s",
    ),
    Bench(
        "metalearning_curve",
        "bench_metalearning_curve.py",
        lambda out, _: [
            "--max-tasks",
            "3",
            "--orders",
            "1",
            "--seeds",
            "1",
            "--meta-train-epochs",
            "1",
            "--steps-per-epoch",
            "10",
            "--budget-multiple",
            "1",
            "--out",
            str(out),
        ],
        timeout_s=600,
        about="69 s",
    ),
    Bench("heldout_searches", "heldout_searches.py", _heldout_args, long=True, timeout_s=3 * 3600, about="35 min"),
    Bench(
        "regret",
        "bench_regret.py",
        lambda out, _: [
            "--seeds",
            "10",
            "--jobs",
            "2",
            "--out",
            str(out.with_suffix("")),
            "--docs",
            str(out.with_suffix("") / "benchmarks.md"),
            "--img",
            str(out.with_suffix("") / "img"),
        ],
        long=True,
        timeout_s=12 * 3600,
        about="hours",
    ),
)


def _shown(arg: str) -> str:
    """An argument as the summary shows it: the interpreter by name, paths of this checkout relative."""
    if arg == PY:
        return "python"
    return arg[len(str(ROOT)) + 1 :] if arg.startswith(str(ROOT) + "/") else arg


def select(only: list[str], run_all: bool) -> list[Bench]:
    """The benchmarks to run: ``only`` by name (any size), else the quick ones (+ long with ``run_all``)."""
    names = {b.name for b in BENCHES}
    unknown = sorted(set(only) - names)
    if unknown:
        raise SystemExit(f"run_all: unknown benchmark(s) {unknown}; have {sorted(names)}")
    if only:
        return [b for b in BENCHES if b.name in only]
    return [b for b in BENCHES if run_all or not b.long]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--all", action="store_true", help="also the long benchmarks (hours)")
    ap.add_argument("--only", action="append", default=[], metavar="NAME", help="run only these (repeatable)")
    ap.add_argument("--out-dir", default=str(HERE / "results" / "run_all"), help="where the JSON goes")
    ap.add_argument("--list", action="store_true", help="print what would run and exit")
    args = ap.parse_args(argv)
    benches = select(args.only, args.all)
    out_dir = Path(args.out_dir)
    if args.list:
        for b in benches:
            print(f"{b.name:22} {b.script:32} {'long' if b.long else 'quick':5} ~{b.about}")
        return 0
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, object] = {
        "machine": platform.platform(),
        "python": platform.python_version(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": {},
    }
    runs: dict[str, dict[str, object]] = summary["runs"]  # type: ignore[assignment]
    failed = []
    with tempfile.TemporaryDirectory(prefix="qt-bench-") as tmp:
        scratch = Path(tmp)
        for b in benches:
            out = out_dir / f"{b.name}.json"
            t0 = time.perf_counter()
            try:
                cmd = [PY, str(HERE / b.script), *b.args(out, scratch)]
                print(f"== {b.name}: {' '.join(cmd[1:])}", flush=True)
                rc = subprocess.run(cmd, cwd=ROOT, timeout=b.timeout_s).returncode
            except subprocess.TimeoutExpired:
                rc = 124
            except subprocess.CalledProcessError as exc:  # preparing its data failed
                rc, cmd = exc.returncode or 1, [PY, str(HERE / b.script)]
            wall = round(time.perf_counter() - t0, 1)
            runs[b.name] = {
                "command": " ".join(_shown(c) for c in cmd),
                "rc": rc,
                "wall_seconds": wall,
                "out": str(out) if out.exists() else None,
                "long": b.long,
            }
            print(f"== {b.name}: exit {rc} in {wall:.0f} s", flush=True)
            if rc != 0:
                failed.append(b.name)
            (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(
        f"ran {len(benches)} benchmark(s), {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}; "
        f"JSON in {out_dir}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
