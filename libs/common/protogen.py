"""Generate the Python gRPC code for proto/ into libs/proto (the package `agentrl.proto`).

protoc names Python modules after file paths, so `proto/agentrl/sandbox/v1/sandbox.proto` would
import as `agentrl.sandbox.v1`, colliding with the service package `agentrl.sandbox`. Generated
imports are therefore rewritten from `agentrl.<area>.v1` to `agentrl.proto.<area>.v1`: every
message lives in one package and no service carries a copy.

Run as `python -m agentrl.common.protogen` (scripts/setup.sh does). `--check` regenerates into a
temporary directory and exits 1 when libs/proto differs, i.e. when a .proto changed without
regenerating.
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import re
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"
OUT_ROOT = REPO_ROOT / "libs" / "proto"
# Written by us, committed: everything else under OUT_ROOT is generated and git-ignored.
KEPT_FILES = {"__init__.py"}
FINGERPRINT_FILE = "_fingerprint.txt"

_IMPORT_RE = re.compile(r"^(from|import) agentrl\.(?!proto\.)", re.MULTILINE)


def proto_files() -> list[Path]:
    files = sorted(PROTO_ROOT.rglob("*.proto"))
    if not files:
        raise FileNotFoundError(f"no .proto files under {PROTO_ROOT}")
    return files


def fingerprint() -> str:
    """Hash of the proto sources and the generator version: equal hash, equal output."""
    import grpc_tools

    digest = hashlib.sha256()
    digest.update(getattr(grpc_tools, "__version__", "").encode())
    for path in proto_files():
        digest.update(str(path.relative_to(PROTO_ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def generate(out_dir: Path) -> None:
    """Compile every .proto into out_dir (laid out as the `agentrl.proto` package)."""
    from importlib.resources import files

    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as raw:
        raw_dir = Path(raw)
        well_known = str(files("grpc_tools") / "_proto")
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={raw_dir}",
            f"--pyi_out={raw_dir}",
            f"--grpc_python_out={raw_dir}",
            *[str(p.relative_to(PROTO_ROOT)) for p in proto_files()],
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {PROTO_ROOT}; its message is above")
        # raw_dir/agentrl/<area>/v1/*.py  ->  out_dir/<area>/v1/*.py
        for src in sorted((raw_dir / "agentrl").rglob("*")):
            if src.is_dir():
                continue
            dest = out_dir / src.relative_to(raw_dir / "agentrl")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(_IMPORT_RE.sub(r"\1 agentrl.proto.", src.read_text()))
        for package_dir in [p for p in out_dir.rglob("*") if p.is_dir()]:
            (package_dir / "__init__.py").touch()
    (out_dir / FINGERPRINT_FILE).write_text(fingerprint() + "\n")


def _generated(root: Path) -> dict[Path, Path]:
    return {
        p.relative_to(root): p
        for p in root.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and p.relative_to(root).as_posix() not in KEPT_FILES
    }


def stale_files(out_dir: Path = OUT_ROOT) -> list[str]:
    """Paths under out_dir that differ from a fresh generation (empty when up to date)."""
    with tempfile.TemporaryDirectory() as fresh:
        generate(Path(fresh))
        want, have = _generated(Path(fresh)), _generated(out_dir)
        differ = [str(k) for k in want if k not in have or not filecmp.cmp(want[k], have[k], False)]
        extra = [str(k) for k in have if k not in want]
        return sorted(differ + extra)


def regenerate(out_dir: Path = OUT_ROOT) -> None:
    for path in _generated(out_dir).values():
        path.unlink()
    for path in sorted((p for p in out_dir.rglob("*") if p.is_dir()), reverse=True):
        shutil.rmtree(path) if path.name == "__pycache__" else None
    generate(out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if libs/proto is stale")
    parser.add_argument("--quiet-if-fresh", action="store_true", help="skip when up to date")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print(
                "generated gRPC code is stale; run scripts/setup.sh (or python -m "
                "agentrl.common.protogen). Differs: " + ", ".join(stale)
            )
            return 1
        print("generated gRPC code is up to date")
        return 0
    current = OUT_ROOT / FINGERPRINT_FILE
    if args.quiet_if_fresh and current.exists() and current.read_text().strip() == fingerprint():
        print("    up to date")
        return 0
    regenerate()
    count = sum(1 for _ in OUT_ROOT.rglob("*_pb2.py"))
    print(f"    generated {count} modules into {OUT_ROOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
