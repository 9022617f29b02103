"""Atomic file writes, the one home of "never leave a half-written file": write to a temporary
name in the target's folder, fsync, then ``os.replace`` into place, with Ctrl-C held back until
the file is whole. Readers (and a resumed run) see the old file or the new one, never a mix.

A leaf module (standard library only; torch and numpy writers are passed in as callables), so
every layer of mmfast (data caches, feature files, checkpoints, logs) can use it.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Callable, Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold back SIGINT until the block ends, so Ctrl-C never leaves a half-saved state."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[Any] = []
    previous = signal.signal(signal.SIGINT, lambda *args: received.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and callable(previous):
            previous(*received[0])


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Create or replace ``path`` with what ``write(binary_file)`` writes, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with deferred_interrupt():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual file mode
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=True) + "\n")


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    atomic_write_bytes(dst, Path(src).read_bytes())


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch  # imported here so the module stays a standard-library leaf

    atomic_write(path, lambda f: torch.save(obj, f))
