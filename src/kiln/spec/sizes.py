"""Sizes as users write them in kiln.yaml (memory limits): 512M, 1G, 65536K, or a bare number of bytes.
K, M and G are powers of 1024, as the container engine counts memory."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

_SIZE = re.compile(r"(\d{1,15})([KMG]?)", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_size(value: object) -> int:
    """Bytes as an int; raises ValueError with a message fit for the user."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("expected a size such as 512M or 1G")
    if isinstance(value, int):
        return value
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"{value[:40]!r} is not a size; write it like 512M, 1G or 65536K (bytes without a suffix)")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def format_size(n: int) -> str:
    """The shortest exact form of `n` bytes: 536870912 -> 512M, 1536M stays 1536M."""
    for suffix in ("G", "M", "K"):
        if n and n % _UNITS[suffix] == 0:
            return f"{n // _UNITS[suffix]}{suffix}"
    return str(n)


MEMORY_MIN = 6 * 1024**2  # the Docker engine refuses less
MEMORY_MAX = 1024**4


def parse_memory(value: object) -> int:
    """A memory limit in bytes, between 6M (the least the engine accepts) and 1T."""
    n = parse_size(value)
    if not MEMORY_MIN <= n <= MEMORY_MAX:
        raise ValueError(f"{value!r} is outside 6M (the least the engine accepts) to 1024G")
    return n


Memory = Annotated[int, BeforeValidator(parse_memory)]  # a memory limit


def parse_disk(value: object) -> int:
    """A disk size in bytes, a whole number of MiB up to 1T (disk images are laid out in MiB)."""
    n = parse_size(value)
    if n % 1024**2 or not 0 < n <= 1024**4:
        raise ValueError(f"{value!r} is not a whole number of megabytes up to 1024G; write it like 2G or 1536M")
    return n


DiskSize = Annotated[int, BeforeValidator(parse_disk)]  # a disk image's size
