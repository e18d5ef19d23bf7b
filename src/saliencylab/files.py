"""Writing files so that a reader (or a rerun after a kill) sees either the old complete file or the new one;
reading JSON files with errors that name them."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (``NAME.PID.tmp``: processes writing the same file do not share
    one); when the block ends without error, move it onto ``path``.

    On an error the temporary file is removed and ``path`` keeps its old content (or stays absent).
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, text: str) -> None:
    """Write UTF-8 text to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_json(path: str | Path, what: str, keys: Sequence[str] = ()) -> Any:
    """The JSON value in ``path`` (``what`` names the file in errors, e.g. "classifier description").

    A missing file is a FileNotFoundError, malformed JSON a ValueError naming the file and position; with
    ``keys`` the value must be an object holding each of them (ValueError naming the file and missing keys).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{what} {path} is not valid JSON: {error}") from None
    missing = [key for key in keys if not isinstance(value, dict) or key not in value]
    if missing:
        raise ValueError(f"{what} {path} lacks {', '.join(map(repr, missing))}; expected a JSON object with keys "
                         f"{', '.join(map(repr, keys))}")
    return value


def stamped(path: str | Path, key: str, stamp: object) -> bool:
    """Whether the JSON object in ``path`` exists and holds ``key`` equal to ``stamp``: the settings a trained
    folder was made with, recorded by :func:`update_json`, so that a rerun with the same settings reuses it."""
    if not Path(path).is_file():
        return False
    description = read_json(path, "description")
    return isinstance(description, dict) and description.get(key) == stamp


def update_json(path: str | Path, **fields: object) -> dict:
    """Add ``fields`` to the JSON object in ``path``, written atomically; the updated object."""
    description = {**read_json(path, "description"), **fields}
    write_atomic(path, json.dumps(description, indent=2))
    return description
