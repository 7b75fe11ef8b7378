"""The search controller's own overhead: time it spends *not* waiting for steps, as a fraction of
the search's wall time (target < 5%).

A real small search: the tiny digits folder (``quicktune data import digits``, 300 images), the
CPU space's test-sized models at 16 px, 2 local workers, MLflow on a local sqlite store, one
wall-clock budget. The controller measures where its own time goes:

* ``busy``: wall time minus the time it slept waiting for steps (ask/tell, MLflow logging,
  dispatch, polling, start-up and the final summary/plots) -- the overhead;
* of which ``optimizer`` (ask + tell), ``tracking`` (MLflow calls), the rest (backend, bookkeeping);
* worker utilisation: the steps' wall time / (workers x search wall time);
* the controller's CPU time (``time.process_time``, children excluded): on a shared, overloaded
  machine busy *wall* time inflates with the load, CPU time does not.

    .venv/bin/python benchmarks/bench_controller_overhead.py --budget 90 \
        --out benchmarks/results/controller_overhead.json

The machine's 1-minute load average is recorded (the development machine is shared).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
TINY_SPACE = HERE.parent / "tests" / "tiny_space.yaml"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=90.0, help="wall-clock budget in seconds")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--space", default=str(TINY_SPACE))
    ap.add_argument("--optimizer", default="quicktune")
    ap.add_argument("--max-epochs", type=int, default=5)
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--data", default=None, help="dataset folder (default: digits, 30 per class, imported)")
    ap.add_argument("--tracking-uri", default=None, help="default: a fresh sqlite store in a temp folder")
    ap.add_argument("--out", default=str(HERE / "results" / "controller_overhead.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.ERROR)

    from quicktune.backends.local import LocalBackend
    from quicktune.search import SearchSpec, run_search
    from quicktune.tracking import SearchTracker

    tmp = Path(tempfile.mkdtemp(prefix="qt-bench-ctl-"))
    data = args.data
    if data is None:
        data = str(tmp / "digits")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "quicktune.cli",
                "data",
                "import",
                "digits",
                data,
                "--max-per-class",
                "30",
                "--size",
                "16",
            ],
            check=True,
            capture_output=True,
        )
    tracking = args.tracking_uri or f"sqlite:///{tmp / 'mlflow.db'}"
    spec = SearchSpec(
        data_uri=data,
        budget_seconds=args.budget,
        space=args.space,
        workers=args.workers,
        max_epochs=args.max_epochs,
        image_size=args.image_size,
        optimizer=args.optimizer,
        search_id=f"bench-{uuid.uuid4().hex[:6]}",
        workdir=str(tmp / "work"),
    )
    backend = LocalBackend(tmp / "work", max_workers=args.workers)
    backend.warm_up()  # as `quicktune search` does: the fork server starts while MLflow connects
    tracker = SearchTracker(tracking, experiment="bench-controller", artifact_location=str(tmp / "artifacts"))
    load_before = os.getloadavg()[0]
    t0 = time.monotonic()
    result = run_search(spec, backend, tracker, progress=False)
    wall = time.monotonic() - t0
    s = result.summary
    busy = s["controller_busy_seconds"]
    doc = {
        "what": "controller overhead = wall time not spent waiting for steps / search wall time",
        "status": result.status,
        "message": result.message,
        "budget_seconds": args.budget,
        "wall_seconds": wall,
        "session_seconds": s["session_seconds"],
        "controller_busy_seconds": busy,
        "overhead_fraction_of_wall": busy / s["session_seconds"],
        "controller_cpu_seconds": s["controller_cpu_seconds"],
        "cpu_overhead_fraction_of_wall": s["controller_cpu_seconds"] / s["session_seconds"],
        "overhead_fraction_of_budget": busy / args.budget,
        "optimizer_seconds": s["optimizer_seconds"],
        "tracking_seconds": s["tracking_seconds"],
        "tracking_calls": s["tracking_calls"],
        "other_seconds": busy - s["optimizer_seconds"] - s["tracking_seconds"],
        "steps_finished": s["steps_finished"],
        "epochs_done": result.epochs_done,
        "configs_tried": result.configs_tried,
        "step_seconds": s["step_seconds"],
        "worker_utilisation": s["step_seconds"] / (args.workers * s["session_seconds"]),
        "optimizer": args.optimizer,
        "workers": args.workers,
        "tracking": "sqlite" if args.tracking_uri is None else "given",
        "load_average_1m_before": load_before,
        "load_average_1m_after": os.getloadavg()[0],
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(json.dumps(doc, indent=2))
    print(
        f"\ncontroller overhead: {busy:.1f} s busy of {s['session_seconds']:.1f} s "
        f"= {100 * doc['overhead_fraction_of_wall']:.1f}% (target < 5%); its CPU time "
        f"{s['controller_cpu_seconds']:.1f} s = {100 * doc['cpu_overhead_fraction_of_wall']:.1f}%; "
        f"optimizer {s['optimizer_seconds']:.1f} s, "
        f"MLflow {s['tracking_seconds']:.1f} s in {s['tracking_calls']} calls; "
        f"{s['steps_finished']} steps, worker utilisation {100 * doc['worker_utilisation']:.0f}%"
    )
    return 0 if result.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
