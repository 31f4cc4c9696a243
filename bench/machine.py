"""A few lines describing the machine and the library versions, printed beside every figure."""

from __future__ import annotations

import os
import platform
from importlib import metadata


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _memory_gib() -> str:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "?"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def describe(redis_line: str = "") -> list[str]:
    packages = ", ".join(f"{p} {_version(p)}" for p in ("grpcio", "protobuf", "redis", "hiredis", "rq", "orjson",
                                                        "ijson"))
    lines = [
        f"machine: {platform.node()} {platform.system()} {platform.release()} {platform.machine()}",
        f"cpu: {_cpu_model()} x {os.cpu_count()} (affinity {len(os.sched_getaffinity(0))}), memory {_memory_gib()}",
        f"python: {platform.python_implementation()} {platform.python_version()}; {packages}",
    ]
    # Other work on a 2-core machine moves these figures a lot; the load average says how busy it was.
    lines.append("load average (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    if redis_line:
        lines.append(f"redis: {redis_line}")
    return lines
