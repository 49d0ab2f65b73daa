"""Generate Python code, .pyi and gRPC typing stubs from protos/.

`python scripts/gen_protos.py` writes into the repository; `--check` generates
into a temporary directory and fails if the committed code differs (stale).
"""

from __future__ import annotations

import filecmp
import os
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
PROTOS = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
GENERATED = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _include_dirs() -> list[str]:
    import google.rpc.status_pb2 as status  # googleapis-common-protos ships the .proto beside it

    googleapis = Path(status.__file__).resolve().parent.parent.parent
    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    return [str(PROTO_DIR), str(googleapis), str(well_known)]


def generate(out: Path) -> None:
    plugin_dir = Path(sys.executable).parent  # protoc-gen-mypy_grpc lives in the venv's bin
    os.environ["PATH"] = f"{plugin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    args = ["protoc", *(f"-I{d}" for d in _include_dirs())]
    args += [f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", f"--mypy_grpc_out={out}"]
    if protoc.main([*args, *PROTOS]) != 0:
        raise SystemExit("protoc failed")
    for proto in PROTOS:
        pkg = out / Path(proto).parent
        while pkg != out:
            (pkg / "__init__.py").touch()
            pkg = pkg.parent


def _generated_files(base: Path) -> list[Path]:
    return sorted(p.relative_to(base) for p in base.rglob("*") if p.name.endswith(GENERATED) or p.name == "__init__.py")


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        stale = [
            str(rel)
            for rel in _generated_files(fresh)
            if not (ROOT / rel).exists() or not filecmp.cmp(fresh / rel, ROOT / rel, shallow=False)
        ]
    if stale:
        print("generated code is stale, run `make protos`:", *stale, sep="\n  ")
        return 1
    print("generated code is up to date")
    return 0


if __name__ == "__main__":
    if "--check" in sys.argv:
        raise SystemExit(check())
    generate(ROOT)
