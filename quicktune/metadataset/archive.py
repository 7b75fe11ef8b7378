"""The shipped campaign's provenance as one archive: pack a campaign's state, unpack it to resume.

Why: the campaigns that made ``data/metadataset.parquet`` are its provenance (plan, every recorded
curve, progress and log). Kept as ~550 loose files it buried the repository's benchmarks; as one
deterministic ``.tar.gz`` next to the table it is one file, and resuming or extending the
campaign on any machine is: unpack into a work folder, run the same ``quicktune metadataset
build`` there (finished (task, config) pairs are never re-run; ``export`` rebuilds the table bit
for bit: ``--workdir V1 --workdir V2`` for the shipped table, ``SHIPPED_CAMPAIGNS``). A plain
``tar -xzf ARCHIVE -C WORKDIR`` gives the same folder.

What is packed: ``plan.json``, ``progress.json``, ``progress.log`` and ``results/<task>/<config>.json``
(not the materialised data, checkpoints or step folders, which a resume recreates). Entries are
sorted with fixed owner, mode and time, so packing the same state twice gives the same bytes.

Unpacking is hostile-input safe: only regular files with the names above are written, never
outside the work folder, and an existing file with other contents is an error (never overwritten).

    python -m quicktune.metadataset.archive unpack /tmp/qt-campaign
    python -m quicktune.metadataset.archive pack /tmp/qt-campaign   # after the campaign grew
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import re
import sys
import tarfile
from importlib import resources
from pathlib import Path

from quicktune.metadataset.plan import CampaignError

#: the archive of the first campaign (the default of ``pack`` / ``unpack``; docs/metadataset.md)
ARCHIVE_NAME = "campaign-v1.tar.gz"
#: every campaign the shipped table is made of, in the order ``metadataset export`` combines them
SHIPPED_CAMPAIGNS = ("campaign-v1.tar.gz", "campaign-v2.tar.gz")
_TOP_FILES = ("plan.json", "progress.json", "progress.log")
_RESULT_RE = re.compile(r"results/[A-Za-z0-9][A-Za-z0-9._-]{0,62}/[A-Za-z0-9._-]{1,128}\.json")
_MAX_MEMBER_BYTES = 16 * 2**20


def shipped_archive_path(name: str = ARCHIVE_NAME) -> Path:
    """Path of a shipped campaign's archive (default ``quicktune/metadataset/data/campaign-v1.tar.gz``)."""
    return Path(str(resources.files("quicktune.metadataset").joinpath("data", name)))


def shipped_archive_paths() -> list[Path]:
    """The archives of every campaign of the shipped table, in combining order (``SHIPPED_CAMPAIGNS``)."""
    return [shipped_archive_path(n) for n in SHIPPED_CAMPAIGNS]


def _packable(rel: str) -> bool:
    return rel in _TOP_FILES or bool(_RESULT_RE.fullmatch(rel))


def campaign_files(workdir: str | os.PathLike[str]) -> list[str]:
    """The workdir-relative names :func:`pack` would pack, sorted (dropped records excluded)."""
    wd = Path(workdir)
    names = [n for n in _TOP_FILES if (wd / n).is_file()]
    if (wd / "results").is_dir():
        names += sorted(p.relative_to(wd).as_posix() for p in (wd / "results").glob("*/*.json") if p.is_file())
    return [n for n in names if _packable(n)]


def pack(workdir: str | os.PathLike[str], dest: str | os.PathLike[str] | None = None) -> Path:
    """Write ``workdir``'s campaign state to ``dest`` (default: the shipped archive's path), atomically."""
    wd = Path(workdir)
    if not (wd / "plan.json").is_file():
        raise CampaignError(f"{wd}: no campaign plan here (nothing to pack)")
    out = Path(dest) if dest is not None else shipped_archive_path()
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for rel in campaign_files(wd):
                data = (wd / rel).read_bytes()
                info = tarfile.TarInfo(rel)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, out)
    return out


def unpack(workdir: str | os.PathLike[str], archive: str | os.PathLike[str] | None = None) -> list[str]:
    """Write an archive's campaign state into ``workdir`` (created if needed) and return the names
    written. Files already there with the same bytes are kept; with other bytes it is an error
    (resume in that folder, or unpack into an empty one)."""
    src = Path(archive) if archive is not None else shipped_archive_path()
    wd = Path(workdir)
    if not src.is_file():
        raise CampaignError(f"{src}: no such campaign archive")
    members: list[tuple[str, bytes]] = []
    try:
        with tarfile.open(src, mode="r:gz") as tar:
            for m in tar:
                if m.isdir():
                    continue
                if not m.isfile() or not _packable(m.name) or m.size > _MAX_MEMBER_BYTES:
                    raise CampaignError(f"{src}: not a campaign archive (unexpected member)")
                fh = tar.extractfile(m)
                assert fh is not None  # a regular file
                members.append((m.name, fh.read()))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise CampaignError(f"{src}: cannot read the archive ({type(exc).__name__})") from None
    if "plan.json" not in {n for n, _ in members}:
        raise CampaignError(f"{src}: not a campaign archive (no plan.json)")
    for rel, data in members:  # check everything before writing anything
        target = wd / rel
        if target.exists() and (not target.is_file() or target.read_bytes() != data):
            raise CampaignError(f"{wd}: {rel} exists with other contents; unpack into an empty folder")
    written = []
    for rel, data in members:
        target = wd / rel
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        written.append(rel)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quicktune.metadataset.archive", description="Pack or unpack a meta-dataset campaign's state."
    )
    parser.add_argument("action", choices=["pack", "unpack"])
    parser.add_argument("workdir", help="campaign work folder")
    parser.add_argument("--archive", default=None, help=f"archive path (default: the shipped {ARCHIVE_NAME})")
    args = parser.parse_args(argv)
    try:
        if args.action == "pack":
            out = pack(args.workdir, args.archive)
            print(f"packed {len(campaign_files(args.workdir))} files of {args.workdir} into {out}")
        else:
            names = unpack(args.workdir, args.archive)
            print(f"unpacked {len(names)} files into {args.workdir}")
    except CampaignError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
