"""Atomic file writes: nothing half-written is ever left at the destination."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, content: bytes | str) -> Path:
    """Write ``content`` to a temporary file beside ``path``, then rename it over ``path``.

    The file gets the mode a plain ``open(path, "w")`` would give it (0666 less the user's umask), not
    the temporary file's 0600. A failure names ``path``, never the temporary file, and leaves no
    temporary file behind.
    """
    path = Path(path)
    data = content.encode() if isinstance(content, str) else content
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise OSError(error.errno, f"cannot write {path}: {error.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as error:
        os.unlink(tmp)
        raise OSError(error.errno, f"cannot write {path}: {error.strerror}") from None
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def write_between_markers(path: str | os.PathLike, start: str, end: str, body: str, title: str = "") -> Path:
    """Replace the text between the ``start`` and ``end`` marker lines of a document (atomically),
    keeping everything around them; a missing document is created as ``title`` + the markers."""
    path = Path(path)
    text = path.read_text() if path.exists() else f"{title}\n\n{start}\n{end}\n"
    if start not in text or end not in text:
        raise ValueError(f"{path}: lacks the markers {start} … {end}")
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, f"{before}{start}\n{body}\n{end}{after}")
