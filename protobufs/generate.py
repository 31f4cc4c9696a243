"""Regenerate the committed gRPC modules from users.proto: `python -m protobufs.generate`.

The outputs are committed so that installing the product never needs protoc; tests/test_protobufs.py
fails when they drift from the .proto.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = "protobufs/users.proto"
OUTPUTS = ("users_pb2.py", "users_pb2_grpc.py", "users_pb2.pyi")


def generate(out_root: Path) -> list[Path]:
    """Run protoc with the proto path rooted at the repository, so imports read `from protobufs import ...`."""
    from grpc_tools import protoc

    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--pyi_out={out_root}",
        str(ROOT / PROTO),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + PROTO)
    return [out_root / "protobufs" / name for name in OUTPUTS]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        for produced in generate(Path(tmp)):
            (ROOT / "protobufs" / produced.name).write_bytes(produced.read_bytes())
            print("wrote protobufs/" + produced.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
