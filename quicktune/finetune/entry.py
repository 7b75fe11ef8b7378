"""``quicktune step``: advance one config to an epoch (the unit of work of a search).

Exit code 0 whenever RESULT.json was written, whatever the status inside it; 2 when it could
not be (unreadable config file, unwritable --out). With ``--evaluate-test`` the command scores
an existing checkpoint on a split instead of training and writes those metrics to --out.
"""

# Why this module lives in ``finetune`` and not in ``cli``: the local backend's fork server runs a
# step in-process (``run_step_main``) in a warm interpreter, and must not re-enter the whole
# ``quicktune`` command line (every subcommand's parser) to do so. ``quicktune.cli.step_cmd`` is a
# thin shell over the parser and handler defined here. Heavy imports stay inside the functions so
# that ``quicktune --help`` remains instant.

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["DESCRIPTION", "add_step_arguments", "build_step_parser", "run_parsed", "run_step_main"]

DESCRIPTION = __doc__
MAX_EPOCHS_ENV = "QUICKTUNE_MAX_EPOCHS"


def add_step_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``quicktune step`` (``StepRequest.argv`` emits them as ``--flag=value``)."""
    p.add_argument(
        "--config",
        help="CONFIG.json: the config's active knobs (docs/search-space.md); required unless --evaluate-test",
    )
    p.add_argument("--data", help="dataset URI: a local folder or s3://bucket/prefix")
    p.add_argument("--to-epoch", type=int, help="train up to this epoch (1-based); required unless --evaluate-test")
    p.add_argument("--checkpoint-dir", help="this config's checkpoint folder (local or s3://)")
    p.add_argument("--out", help="where to write RESULT.json (local or s3://)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0, help="training seed (data order, init, augmentation)")
    p.add_argument(
        "--split-seed", type=int, default=0, help="seed of the 60/20/20 split when the data has no split files"
    )
    p.add_argument(
        "--image-size", type=int, default=None, help="input size in px (default: 32 on CPU, the model's on GPU)"
    )
    p.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        help="lr schedule length (the search's epoch budget); default $QUICKTUNE_MAX_EPOCHS or 50",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: $QUICKTUNE_NUM_THREADS, else $OMP_NUM_THREADS, else the CPUs of the "
        "process's cgroup quota / affinity)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="data-loader worker processes (default: 0 on CPU or without augmentation; on CUDA one per CPU of the "
        "quota, at most 4)",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16", "auto"),
        default="auto",
        help="training precision: auto = bf16 on CUDA devices of compute capability >= 8, fp16 + GradScaler on "
        "older CUDA devices, fp32 on CPU",
    )
    p.add_argument("--cache-dir", default=None, help="dataset cache folder (S3 mirrors)")
    p.add_argument(
        "--weights-config",
        default=None,
        help="weights-source config (YAML/JSON path; default $QUICKTUNE_WEIGHTS_CONFIG, see quicktune.hub.weights)",
    )
    p.add_argument("--deterministic", action="store_true", help="deterministic cuDNN kernels (slower on GPU)")
    p.add_argument(
        "--evaluate-test",
        action="store_true",
        help="do not train: evaluate the best checkpoint on --split and write the metrics to --out",
    )
    p.add_argument("--split", default="test", help="split for --evaluate-test")
    p.add_argument(
        "--worker",
        action="store_true",
        help="warm worker: read one JSON step request per stdin line, run it in this process, answer "
        "one JSON line per request on stdout (saves the ~5 CPU s of imports per step)",
    )


def build_step_parser() -> argparse.ArgumentParser:
    """A stand-alone parser for the step's arguments (what follows ``quicktune step``)."""
    p = argparse.ArgumentParser(
        prog="quicktune step", description=DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_step_arguments(p)
    return p


def run_step_main(argv: Sequence[str]) -> int:
    """Run ``quicktune step ARGV`` in this process and return its exit code: what the local
    backend's fork server calls in each forked step. Usage errors return 2 (argparse's code), as
    the command line does; logging is set up as ``quicktune`` does when nobody has done it yet."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args = build_step_parser().parse_args(list(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return run_parsed(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _env_max_epochs() -> int | None:
    # --max-epochs is set by StepRequest.argv() since issue 13. The env var is the older way (a step
    # pod or a queued local request made by the previous version may still send it): a fallback
    # kept for one version, to be removed after it. A malformed value raises (the step crashes
    # before any result, as it always did; the backend conformance suite relies on it).
    raw = os.environ.get(MAX_EPOCHS_ENV)
    return int(raw) if raw else None


def run_parsed(args: argparse.Namespace) -> int:
    """The step, from parsed arguments (the handler of ``quicktune step``)."""
    from quicktune import storage

    if args.worker:
        return _worker(args)
    missing = [f"--{k.replace('_', '-')}" for k in ("data", "checkpoint_dir", "out") if getattr(args, k) is None]
    if missing:
        print(f"quicktune step: {', '.join(missing)} required", file=sys.stderr)
        return 2
    if args.evaluate_test:
        return _evaluate(args)
    if args.config is None or args.to_epoch is None:
        print("quicktune step: --config and --to-epoch are required (unless --evaluate-test)", file=sys.stderr)
        return 2
    try:
        config = json.loads(storage.read_bytes(args.config))
    except OSError as exc:
        return _fail(args, f"cannot read --config {args.config}: {exc}")
    except ValueError as exc:
        return _fail(args, f"--config {args.config} is not valid JSON: {exc}", status="invalid")
    max_epochs = args.max_epochs or _env_max_epochs()
    from quicktune.finetune.step import run_step

    try:
        threads = _threads(args)
    except ValueError as exc:
        return _fail(args, str(exc))

    try:
        result = run_step(
            config,
            args.data,
            args.to_epoch,
            args.checkpoint_dir,
            out=args.out,
            device=args.device,
            seed=args.seed,
            image_size=args.image_size,
            cache_dir=args.cache_dir,
            max_epochs=max_epochs,
            threads=threads,
            split_seed=args.split_seed,
            num_workers=args.workers,
            deterministic=args.deterministic,
            weights_config=args.weights_config,
            precision=args.precision,
        )
    except Exception as exc:  # noqa: BLE001 - only writing --out can raise here
        print(f"quicktune step: could not write {args.out}: {exc}", file=sys.stderr)
        return 2
    last = result["epochs"][-1] if result["epochs"] else None
    summary = f"status={result['status']}"
    if last:
        summary += f" epoch={last['epoch']} score={last['score']:.4f} cost={last['cost']:.2f}s"
    if result["message"]:
        summary += f" message={result['message']}"
    print(summary)
    return 0


def _threads(args: argparse.Namespace) -> int:
    """``--threads``, else the default of :func:`quicktune.finetune.resources.default_threads`."""
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        return int(args.threads)
    from quicktune.finetune.resources import default_threads

    return default_threads()


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from quicktune import storage
    from quicktune.finetune.export import evaluate_checkpoint

    try:
        torch.set_num_threads(_threads(args))
        metrics = evaluate_checkpoint(
            args.checkpoint_dir, args.data, split=args.split, device=args.device, cache_dir=args.cache_dir
        )
        out = {"status": "ok", "message": "", **metrics}
    except Exception as exc:  # noqa: BLE001
        logging.getLogger(__name__).exception("evaluation failed")
        out = {"status": "failed", "message": f"{type(exc).__name__}: {exc}"}
    try:
        storage.write_bytes(args.out, json.dumps(out, indent=1).encode())
    except Exception as exc:  # noqa: BLE001
        print(f"quicktune step: could not write {args.out}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


def _fail(args: argparse.Namespace, message: str, status: str = "failed") -> int:
    """A bad config *file* still yields a RESULT.json when --out is writable: ``failed`` when it
    cannot be read (maybe transient), ``invalid`` (kind ``config``, not retried) when it is not JSON."""
    from quicktune.finetune.result import make_result, write_result

    extra: dict[str, Any] = {"invalid_kind": "config"} if status == "invalid" else {}
    try:
        write_result(args.out, make_result(status, message, **extra))
    except Exception as exc:  # noqa: BLE001
        print(f"quicktune step: {message}; and could not write {args.out}: {exc}", file=sys.stderr)
        return 2
    print(f"status={status} message={message}")
    return 0


_REQUEST_KEYS = {
    "config",
    "data",
    "to_epoch",
    "checkpoint_dir",
    "out",
    "device",
    "seed",
    "image_size",
    "max_epochs",
    "split_seed",
    "weights_config",
    "cache_dir",
    "deterministic",
    "precision",
    "id",
}


def _worker(args: argparse.Namespace) -> int:
    """Serve step requests from stdin, one JSON object per line, e.g.
    ``{"id": "a", "config": {...}, "data": "...", "to_epoch": 2, "checkpoint_dir": "...", "out": "..."}``;
    answers ``{"id": "a", "status": ..., "message": ..., "out": ...}`` per line (``"error"`` when the
    request itself is malformed or RESULT could not be written). Each request is an ordinary
    ``run_step`` (same checkpoints, same RESULT.json, same exact resume: every epoch reseeds from
    (seed, epoch)); the interpreter, the torch/timm imports and ``quicktune.finetune.warm_cache``
    (datasets, decoded images, the last config's training state) are shared. CLI flags give the
    defaults for device, threads, seed, image size, schedule length and cache folder."""
    from quicktune.finetune import warm_cache
    from quicktune.finetune.step import run_step

    warm_cache.enable()  # a long-lived process: datasets, decoded images, the last config's state
    try:
        return _serve(args, run_step)
    finally:
        warm_cache.disable()


def _serve(args: argparse.Namespace, run_step: Any) -> int:
    defaults = {
        "device": args.device,
        "seed": args.seed,
        "image_size": args.image_size,
        "split_seed": args.split_seed,
        "max_epochs": args.max_epochs or _env_max_epochs(),
        "weights_config": args.weights_config,
        "cache_dir": args.cache_dir,
        "deterministic": args.deterministic,
        "precision": args.precision,
    }
    threads = _threads(args)
    for line in sys.stdin:
        if not line.strip():
            continue
        answer: dict[str, Any] = {}
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("a request must be a JSON object")
            answer["id"] = req.get("id")
            unknown = sorted(set(req) - _REQUEST_KEYS)
            missing = [k for k in ("config", "data", "to_epoch", "checkpoint_dir", "out") if k not in req]
            if unknown or missing:
                raise ValueError(f"unknown keys {unknown}, missing keys {missing}")
            kw = {**defaults, **{k: v for k, v in req.items() if k in defaults}}
            result = run_step(
                req["config"],
                req["data"],
                int(req["to_epoch"]),
                req["checkpoint_dir"],
                out=req["out"],
                threads=threads,
                num_workers=args.workers,
                **kw,
            )
            answer.update(status=result["status"], message=result["message"], out=req["out"])
        except Exception as exc:  # noqa: BLE001 - a bad request must not stop the worker
            answer["error"] = f"{type(exc).__name__}: {exc}"
        print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover - `python -m quicktune.finetune.entry ARGS` = `quicktune step ARGS`
    sys.exit(run_step_main(sys.argv[1:]))
