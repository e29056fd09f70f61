"""Writing files and folders so that a crash, a full disk or a kill leaves the old version or the new one.

Everything the package writes goes through here: a temporary sibling is written in full, then renamed over
the target in one `os.replace` (atomic within a file system). Temporary names start with a dot, so uploads
and folder listings that skip hidden files never see them. `tempfile` makes its files 0600 and its folders
0700, and a rename keeps the mode, so each is given the mode a plain write would have had under the umask.

A full disk (ENOSPC) or an exhausted quota (EDQUOT) is raised as `DiskFull`, an `OSError` naming the file that
did not fit, whatever the writer raised: Python gives no file name, safetensors its own error type, and
`torch.save` a `RuntimeError` ("unexpected pos ...") with the errno lost. The half-written temporary is removed
first, so what a full disk leaves behind is the previous complete version, never a torn one.
"""

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Error numbers meaning the file system has no room left for this writer.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
#: How writers that do not raise `OSError` say so (safetensors: "No space left on device (os error 28)").
DISK_FULL_WORDS = {"no space left on device": errno.ENOSPC, "disk quota exceeded": errno.EDQUOT}
#: What to do, when no run says more (training runs name their newest checkpoint instead).
FREE_SPACE_ADVICE = "free space on that file system (or write elsewhere) and run the command again"


class DiskFull(OSError):
    """A write that ran out of space or quota; `str()` is one line: the file, the cause and what to do."""

    def __init__(self, path: str | os.PathLike, code: int = errno.ENOSPC, advice: str = FREE_SPACE_ADVICE):
        reason = "no space left on device" if code == errno.ENOSPC else "no space left on device (disk quota exceeded)"
        super().__init__(code, reason, str(path))
        self.advice = advice

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}; {self.advice}"


def disk_full_errno(error: BaseException) -> int | None:
    """ENOSPC or EDQUOT when `error`, or an error it was raised from, says the disk or quota is full; else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            return error.errno
        message = str(error).lower()
        for words, code in DISK_FULL_WORDS.items():
            if words in message:
                return code
        error = error.__cause__ or error.__context__
    return None


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Inside, running out of space raises `DiskFull` naming `path` (the file or folder being written; the
    outermost `writing` names it, so a caller can name the final file rather than a temporary one)."""
    try:
        yield
    except DiskFull as error:
        raise DiskFull(path, error.errno) from error.__cause__
    except Exception as error:  # any writer's error type: only disk-full ones are translated, the rest go on
        code = disk_full_errno(error)
        if code is None:
            raise
        raise DiskFull(path, code) from error


class _RecordingFile:
    """A binary file for `torch.save` that keeps the `OSError` its writes raised: torch replaces it with a
    `RuntimeError` that has lost the errno."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.file.flush()


def torch_save(obj, path: str | os.PathLike) -> Path:
    """`torch.save(obj, path)` through a temporary sibling, a full disk raised as `DiskFull` naming `path`."""
    import torch

    with writing(path), atomic_path(path) as staging, open(staging, "wb") as file:
        recording = _RecordingFile(file)
        try:
            torch.save(obj, recording)
        except RuntimeError as error:
            if recording.error is None:
                raise
            raise recording.error from error
    return Path(path)


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
    with writing(path):
        handle, staging = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        with writing(path):
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
        with writing(target):
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


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append `text` to a log (a full disk may leave a torn last line, which readers of the log drop)."""
    with writing(path), open(path, "a") as file:
        file.write(text)


__all__ = ["DiskFull", "append_text", "atomic_path", "current_umask", "disk_full_errno", "move_files_into",
           "plain_mode", "replace_directory", "staged_directory", "torch_save", "write_text_atomic", "writing"]
