"""Byte sizes as users write them (`500MiB`, `1G`, `64KB` or a number of bytes), for memory
limits and core file sizes."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, WithJsonSchema

# K, M, G, T and Ki, KiB... count in 1024s (as systemd and Kubernetes' Ki do); KB, MB... in 1000s.
UNITS = {
    "": 1, "B": 1,
    "K": 1 << 10, "KI": 1 << 10, "KIB": 1 << 10, "KB": 10**3,
    "M": 1 << 20, "MI": 1 << 20, "MIB": 1 << 20, "MB": 10**6,
    "G": 1 << 30, "GI": 1 << 30, "GIB": 1 << 30, "GB": 10**9,
    "T": 1 << 40, "TI": 1 << 40, "TIB": 1 << 40, "TB": 10**12,
}
PATTERN = r"^\s*\d+(\.\d+)?\s*([KkMmGgTt]([Ii]?[Bb]?)?|[Bb])?\s*$"
MAX = 1 << 62

_PARSE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(value: object) -> int:
    """`500MiB`, `1G`, `64KB` or a plain number of bytes -> bytes."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a string like 512MiB, 1G")
    if isinstance(value, int):
        number, factor = float(value), 1
    elif isinstance(value, str) and (match := _PARSE.match(value)) and match[2].upper() in UNITS:
        number, factor = float(match[1]), UNITS[match[2].upper()]
    else:
        raise ValueError(f"{value!r} is not a size (use a number of bytes or 64KiB, 512MiB, 1G, 2GB)")
    size = int(number * factor)
    if size < 0 or size > MAX:
        raise ValueError(f"a size must be between 0 and {MAX} bytes")
    return size


Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": MAX},
                {"type": "string", "pattern": PATTERN},
            ],
            "description": "bytes, or a string like 64KiB, 512MiB, 1G (1024s) or 2GB (1000s)",
        }
    ),
]
