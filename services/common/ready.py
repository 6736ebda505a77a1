"""Ready files: how a service started with port 0 tells its launcher the port."""

from __future__ import annotations

import os
from pathlib import Path


def write_ready_file(path: str | os.PathLike[str] | None, port: int) -> None:
    """Write the bound port to ``path`` atomically; do nothing without a path.

    The launcher polls for the file, so a reader never sees a partial write:
    the port goes to a temporary file first, which is then renamed.
    """
    if not path:
        return
    target = Path(path)
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_text(f"{port}\n", encoding="ascii")
    os.replace(temporary, target)
