"""Export the JSON Schemas of every record on a topic into ``schemas/json/``.

Run ``python -m schemas.jsonschema`` after changing a model; a test fails while the
committed files are stale. These files are the contract for downstream consumers.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Final

import msgspec
import orjson
from pydantic import BaseModel

from schemas.conversation import ConversationChange
from schemas.crawl import CrawlRequest
from schemas.envelope import Envelope
from schemas.records import DeadLetter

JSON_DIR: Final = Path(__file__).resolve().parent / "json"

Record = type[BaseModel] | type[msgspec.Struct]

# file stem -> model. The stem names the topic suffix the record travels on.
RECORDS: Final[dict[str, Record]] = {
    "events": Envelope,
    "dlq": DeadLetter,
    "conversations": ConversationChange,
    "crawl": CrawlRequest,
}


def render(model: Record) -> bytes:
    """Return the JSON Schema of ``model`` (pydantic or msgspec) as stable, pretty JSON bytes."""
    if issubclass(model, msgspec.Struct):
        schema = msgspec.json.schema(model)
        for definition in schema.get("$defs", {}).values():
            # msgspec copies the class docstring as written, indented lines and all.
            if "description" in definition:
                definition["description"] = inspect.cleandoc(definition["description"])
    else:
        schema = model.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://convsync.dev/schemas/{model.__name__}.json"
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def stale() -> list[str]:
    """Return the names of schema files that differ from the models."""
    out = []
    for stem, model in RECORDS.items():
        path = JSON_DIR / f"{stem}.json"
        if not path.exists() or path.read_bytes() != render(model):
            out.append(path.name)
    return out


def write() -> list[Path]:
    """Write every schema file; return the paths written."""
    JSON_DIR.mkdir(exist_ok=True)
    paths = []
    for stem, model in RECORDS.items():
        path = JSON_DIR / f"{stem}.json"
        path.write_bytes(render(model))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write():
        sys.stdout.write(f"wrote {p}\n")
