from collections.abc import Callable
from typing import Any

SOURCE_SHA: str

def configure(dumps: Callable[..., bytes], sort_keys_option: int, plain_option: int, /) -> None: ...
def map_entries(
    entries: list[Any], fallback: Callable[[str, int | None, dict[str, Any], str], Any], /
) -> tuple[list[tuple[bytes, bytes]], list[str]] | None: ...
def sha256_hex(data: bytes, /) -> str: ...
