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
    """Yield a temporary path beside ``path``; when the block ends without error, move it onto ``path``.

    On an error the temporary file is removed and ``path`` keeps its old content (or stays absent).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
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
