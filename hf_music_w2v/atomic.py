"""Writing files and folders so that a crash, a full disk or a kill leaves the old version or the new one.

Everything the package writes goes through here: a temporary sibling is written in full, then renamed over
the target in one `os.replace` (atomic within a file system). Temporary names start with a dot, so uploads
and folder listings that skip hidden files never see them. `tempfile` makes its files 0600 and its folders
0700, and a rename keeps the mode, so each is given the mode a plain write would have had under the umask.
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def current_umask() -> int:
    """The process's umask, read without changing it (`os.umask` can only read it by setting it, which would race
    the demo's threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_mode(directory: bool = False) -> int:
    """The mode `open()` or `mkdir()` would give a new file or folder: 0644 / 0755 under umask 022."""
    return (0o777 if directory else 0o666) & ~current_umask()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `path` (same suffix) to write; it replaces `path` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        yield Path(staging)
        os.chmod(staging, plain_mode())
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.remove(staging)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temporary sibling and one rename."""
    with atomic_path(path) as staging:
        staging.write_text(text)
    return Path(path)


def give_plain_modes(folder: Path) -> None:
    """`folder` and everything in it get the modes a plain write would have given (safetensors, for one, writes
    its files 0600)."""
    file_mode, folder_mode = plain_mode(), plain_mode(directory=True)
    os.chmod(folder, folder_mode)
    for root, folders, files in os.walk(folder):
        for name in folders:
            os.chmod(os.path.join(root, name), folder_mode)
        for name in files:
            os.chmod(os.path.join(root, name), file_mode)


def replace_directory(source: Path, target: Path) -> None:
    """Move the finished folder `source` to `target`, replacing any old `target` only once `source` is complete."""
    give_plain_modes(source)
    target = Path(target)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(source, target)
    if old is not None:
        shutil.rmtree(old)


@contextmanager
def staged_directory(target: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary sibling of `target`; on success it replaces `target`, on error it is removed.

    With `replace=False` a `target` that exists by then is kept and the new folder dropped: for content-keyed
    caches, where another process may have published the same entry and may be reading it right now.
    """
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
        if replace:
            replace_directory(staging, target)
        else:
            give_plain_modes(staging)
            try:
                os.rename(staging, target)  # refused (EEXIST / ENOTEMPTY) when another process published first
            except OSError:
                if not target.is_dir():
                    raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def move_files_into(source: Path, target: Path) -> None:
    """Rename every file of the finished folder `source` into `target` (each one atomically), then drop `source`.

    For folders that hold other things too (a run folder with logs and checkpoints): each file is either its
    old version or the complete new one.
    """
    target.mkdir(parents=True, exist_ok=True)
    give_plain_modes(source)
    for file in source.iterdir():
        os.replace(file, target / file.name)
    shutil.rmtree(source, ignore_errors=True)


__all__ = ["atomic_path", "current_umask", "move_files_into", "plain_mode", "replace_directory", "staged_directory",
           "write_text_atomic"]
