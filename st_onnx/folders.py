"""Writing model folders safely: work folders, atomic swaps of a folder or a file, locks, waiting for a save
under way, and naming a full disk. What a crash, a second process or a full disk must not turn into a half-written
model folder; the folder format itself (file names, configs) is ``layout``'s.

Standard library only (the ONNX-only path writes graph caches and stat records with it).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from .errors import DiskFullError, InvalidInputError, ModelFolderError

logger = logging.getLogger(__name__)
T = TypeVar("T")


# Work folders (an export's, a pack's, a graft's, an atomic write's) are hidden: ".export-*", ".pack-*" and
# ".graft-*" beside the graphs, ".NAME.tmp-*", ".NAME.old-*" and ".NAME.export-*" (an export into a copy) beside
# a folder being replaced. A process killed
# mid-way (SIGKILL) leaves its own behind; one a day old cannot belong to a running process, and the next write
# of the same kind there removes it; copies of a model folder leave them all out.
ABANDONED_S = 24 * 3600
WORK_FOLDERS = (".export-*", ".pack-*", ".graft-*", ".*.tmp-*", ".*.old-*", ".*.export-*")


def remove_abandoned(folder: Path, pattern: str) -> None:
    """Remove the work folders matching ``pattern`` in ``folder`` older than ``ABANDONED_S``."""
    for old in folder.glob(pattern):
        try:
            if old.is_dir() and not old.is_symlink() and time.time() - old.stat().st_mtime > ABANDONED_S:
                _make_writable(old)
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


@contextmanager
def work_folder(parent: str | os.PathLike, kind: str, fallback: Path | None = None) -> Iterator[Path]:
    """A hidden temporary folder ``.<kind>-*`` in ``parent`` (made if missing, and removed again if the write
    left it empty) for one export, pack or graft, removed afterwards; those left a day ago by killed processes
    go first. In ``fallback`` (an existing folder that ``atomic_folder`` will fill in place) where ``parent``
    cannot be written."""
    parent = Path(parent)
    handling = sys.exc_info()[1]  # the caller's own error, if it writes while handling one: not this write's
    made = missing_folders(parent)
    for attempt in (1, 2):
        parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned(parent, f".{kind}-*")
        try:
            tmp = _mkdtemp(f".{kind}-", parent, fallback)
            break
        except FileNotFoundError:  # another write that failed removed the empty parent it made: make it again
            if attempt == 2:
                raise
    try:
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            remove_empty(made)  # a failed write leaves no empty onnx/st_onnx/ behind; a graph written keeps it
    except BaseException as e:
        full = disk_full(e, parent, handling=handling)  # the room left once the work folder went
        if full is not None:
            raise full from e
        raise


# How other libraries' writers report a full disk when they raise no OSError (safetensors' SafetensorError,
# tokenizers' Exception): the text of the OS error only
_DISK_FULL_TEXTS = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")


def disk_full(error: BaseException, folder: Path, disk: Path | None = None,
              handling: BaseException | None = None) -> DiskFullError | None:
    """For an error that a full disk caused while writing into ``folder``, a DiskFullError naming the folder and
    the room left on its disk (or on ``disk``'s, where the write went: beside a mount point); None for any other
    error. A DiskFullError of a write inside ``folder`` (an export's work folder in OUT_DIR's copy) is named
    again after ``folder``, the one the user asked to write. ``handling``: the error the caller was handling
    when the write began (``sys.exc_info()``), which says nothing of this write's disk."""
    if not isinstance(error, Exception):  # an interrupt while a write failed stays an interrupt
        return None
    detail = next((d for d in map(_disk_full_detail, _chain(error, handling)) if d is not None), None)
    if detail is None:
        return None
    where = next((p for p in (disk or folder, *(disk or folder).parents) if p.exists()), folder)
    try:
        room = f"{shutil.disk_usage(where).free / 1e6:,.0f} MB free" + (" there now" if disk is None else
                                                                         f" now on the disk of {disk}")
    except OSError:
        room = "its free space unknown"
    full = DiskFullError(errno.ENOSPC, f"No space left on device writing into {folder} ({room}; what was written "
                                       f"is removed again){detail}")
    full.detail = detail
    return full


def _disk_full_detail(error: BaseException) -> str | None:
    """What a message adds about ``error`` where a full disk caused it ("" for a plain ENOSPC); None otherwise."""
    if isinstance(error, DiskFullError):
        return error.detail
    if isinstance(error, OSError) and error.errno is not None:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            return None
        return f" ({type(error).__name__}: {error})" if error.filename else ""
    if any(text in str(error) for text in _DISK_FULL_TEXTS):  # shutil.Error (a copytree's) has no errno either
        return f" ({type(error).__name__}: {str(error)[:300]})"
    return None


def _chain(error: BaseException | None, stop: BaseException | None = None):
    """``error``, then the errors it was raised from or while handling (torch.save writing into a Python file
    raises its own RuntimeError, "unexpected pos", over the file's ENOSPC), up to ``stop``."""
    seen = set()
    while error is not None and error is not stop and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def missing_folders(folder: Path) -> list[Path]:
    """The folders ``folder.mkdir(parents=True)`` would make, innermost first."""
    missing = []
    while not folder.exists() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (innermost first, as ``missing_folders`` lists them) up to the first that is not empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _make_writable(folder: Path) -> None:
    """Give the owner write access to ``folder`` and the folders in it (a copy of a read-only model folder)."""
    for root, _, _ in os.walk(folder):  # read-only folders can still be listed
        os.chmod(root, os.stat(root).st_mode | 0o700)


def copy_graph(graph: Path, dest: Path) -> None:
    """Copy a fused graph with the files named after it (manifest, external weights) into the folder ``dest``;
    its load-time stat record stays behind (it describes the source folder's files)."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in graph.parent.glob(graph.stem + ".*"):
        if not f.name.endswith(".stat.json"):
            shutil.copyfile(f, dest / f.name)


def copy_model_folder(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy a model folder's files into ``dst`` (which may exist). Contents only: the copy gets the user's usual
    permissions, so a copy of a read-only folder can take a graph; work folders and load-time stat records of
    ``src`` are left out."""
    shutil.copytree(src, dst, dirs_exist_ok=True, copy_function=shutil.copyfile,
                    ignore=shutil.ignore_patterns(*WORK_FOLDERS, "*.stat.json"))
    _make_writable(Path(dst))


@contextmanager
def locked(folder: str | os.PathLike, waiting: str | None = None) -> Iterator[None]:
    """Hold an exclusive lock on the folder itself (``flock`` on its directory: no lock file is left behind)
    while a write there is assembled; other processes and threads taking it wait (logged at INFO with
    ``waiting``, what they wait for, when given). Where no such lock can be taken (Windows; NFS, which refuses
    an exclusive lock on a read-only descriptor; an unreadable folder), the write goes ahead unlocked: the lock
    only orders writers that run at the same time."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as e:
        logger.debug("no lock on %s (%s): writing unlocked", folder, e)
        yield
        return
    try:
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting:
                    logger.info("waiting for %s (its lock on %s is held)", waiting, folder)
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            # the kernel's answers mean "no lock here" (ENOLCK, EOPNOTSUPP, EINVAL; NFS's EBADF on a read-only
            # descriptor; Lustre's ENOSYS without -o flock); one without an errno is a signal handler's
            # TimeoutError: the caller's deadline, not the file system's
            if e.errno is None:
                raise
            logger.debug("no lock on %s (%s): writing unlocked", folder, e)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target``: two renames, the old
    folder moved aside (``.NAME.old-PID``), then the new one into place.

    On an exception the temporary folder is removed and ``target`` is left exactly as it was, so a
    crash never leaves a half-written model folder (one between the renames leaves the old folder whole,
    aside). A ``target`` that is a symbolic link is written through:
    the folder it points to is replaced, the link stays.

    An existing ``target`` that cannot be swapped is filled in place, entry by entry, as sentence-transformers
    writes every folder: a mount point (a container's volume: renaming it fails), or a writable folder in a
    parent this process cannot write (the temporary folder is then made inside ``target``). The new files come
    whole into ``target``'s file system first, then renames swap the entries: an exception, a full disk included,
    leaves ``target`` as it was; a crash during the renames can leave a mix of old and new entries.
    """
    target = Path(target).absolute()
    handling = sys.exc_info()[1]  # the caller's own error, if it saves while handling one: not this write's
    if target.is_symlink():
        target = target.resolve()
    cwd = _working_dir()
    here = cwd is not None and os.path.realpath(target) == str(cwd)
    if cwd is not None and not here and Path(os.path.realpath(target)) in cwd.parents:
        raise InvalidInputError(f"{target} holds the working directory {cwd}: replacing the folder would pull the "
                                "directory out from under this process; write elsewhere, or change directory first")
    if target.exists() and not target.is_dir():  # as os.makedirs says it (sentence-transformers' save)
        raise FileExistsError(errno.EEXIST, "a file is in the way of the folder to write (allowed: a folder, "
                              "new or existing)", str(target))
    blocked = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise NotADirectoryError(errno.ENOTDIR, f"a file is in the way of the folder {target} (allowed: a path "
                                 "whose existing parents are folders)", str(blocked))
    target.parent.mkdir(parents=True, exist_ok=True)
    for work in (f".{target.name}.tmp-*", f".{target.name}.old-*"):
        remove_abandoned(target.parent, work)
    tmp = _mkdtemp(f".{target.name}.tmp-", target.parent, fallback=target)
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700: the folder must read like any other the user makes
    old = None
    filling = False  # into target's file system (else beside it, or inside it where tmp is inside it)
    swapping = False  # the new folder's rename into place
    try:
        yield tmp
        filling = True
        if tmp.parent == target:
            _fill_in_place(tmp, target)
            return
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            try:
                os.replace(target, old)
            except FileNotFoundError:  # another process's save moved it aside meanwhile; its own goes in next
                old = None
            except OSError as e:
                if e.errno not in _CANNOT_MOVE:
                    raise
                old = None
                logger.info("%s cannot be moved aside (%s): writing into it in place", target, e.strerror)
                _fill_in_place(tmp, target)
                return
        swapping = True
        os.replace(tmp, target)
    except BaseException as e:
        raced = swapping and target.exists()  # another process's save put its folder in place first
        if old is not None and old.exists():
            if not target.exists():
                os.replace(old, target)  # the new folder did not take its place: the old one goes back
            else:  # another process's save put its folder in place meanwhile: it stays, and the old copy goes
                raced = True
                shutil.rmtree(old, ignore_errors=True)
        if tmp.exists():
            _make_writable(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
        if raced and isinstance(e, OSError) and e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileExistsError(e.errno, f"another save into {target} finished while this one was writing; "
                                           f"{target} holds that one: save again to replace it") from e
        beside = not filling and tmp.parent != target and target.is_dir() and _other_disk(target, tmp.parent)
        full = disk_full(e, target, disk=tmp.parent if beside else None,  # a mount point's copy went beside it
                         handling=handling)
        if full is not None:
            raise full from e
        raise
    if here:  # save("."): the process stays in the folder by that name, not in the one moved aside
        os.chdir(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# Why a folder cannot be renamed while it can still be written into: a mount point (EBUSY), another file system
# (EXDEV), a sticky or unwritable parent (EACCES, EPERM), a read-only parent file system (EROFS).
_CANNOT_MOVE = (errno.EBUSY, errno.EXDEV, errno.EACCES, errno.EPERM, errno.EROFS)


def _mkdtemp(prefix: str, folder: Path, fallback: Path | None = None) -> Path:
    """A temporary folder in ``folder``; in ``fallback`` (an existing folder, which the write then fills in
    place) where ``folder`` cannot be written."""
    try:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=folder))
    except OSError as e:
        if fallback is None or e.errno not in _CANNOT_MOVE or not fallback.is_dir():
            raise
        logger.info("cannot write in %s (%s): working inside %s", folder, e.strerror, fallback)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=fallback))


def _moved_aside(target: Path) -> list[Path]:
    """The ``.NAME.old-PID`` folders of writes into ``target`` between ``atomic_folder``'s two renames (or killed
    there), the newest last."""
    import glob

    try:  # by time (PIDs do not sort as text)
        return sorted((p for p in target.parent.glob(f".{glob.escape(target.name)}.old-*") if p.is_dir()),
                      key=lambda p: p.stat().st_mtime)
    except OSError:
        return []


def _writer_alive(aside: Path) -> bool:
    """Whether the save that moved ``aside`` there may still be under way: moved a moment ago (a save's two
    renames are microseconds apart) by a process that lives (a killed save's PID can be another process's now)."""
    pid = aside.name.rpartition("-")[2]
    try:
        if not pid.isdigit() or _now() - aside.stat().st_ctime > SWAP_RECENT_S:  # a rename sets the ctime
            return False
    except OSError:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: another user's process, alive
        return True
    return True


# How long a load waits for a folder that a live process's save has moved aside (its two renames are microseconds
# apart; a loaded machine can stretch them), and how recent a folder moved aside is to count as a save under way
SWAP_WAIT_S = 2.0
SWAP_RECENT_S = 10.0


_now = time.time  # the clock _writer_alive reads (tests move it)


def wait_for_swap(target: str | os.PathLike) -> bool:
    """For a missing folder that a save under way has moved aside (a live process's ``.NAME.old-PID``): wait up
    to ``SWAP_WAIT_S`` for the new folder to take its place; True once a folder is there."""
    target = Path(target).expanduser().absolute()
    deadline = time.monotonic() + SWAP_WAIT_S
    while not target.is_dir():
        if time.monotonic() > deadline or not any(_writer_alive(p) for p in _moved_aside(target)):
            return target.is_dir()
        time.sleep(0.01)
    return True


# reads of a folder that saves keep replacing meanwhile, before giving up (read_whole)
READ_TRIES = 3


def read_whole(folder: Path, read: Callable[[], T]) -> T:
    """``read()``'s result once it read one save's files of ``folder``. Another process's save swaps a new folder
    in (its identity changes): a read that overlapped it may hold one save's Transformer and the other's
    Pooling, or have failed on a file that moved away, so it is made again (up to READ_TRIES times)."""
    error: Exception | None = None
    for attempt in range(1, READ_TRIES + 1):
        seen = folder_identity(folder)
        try:
            result = read()
        except Exception as e:
            if not _replaced_since(folder, seen):
                raise
            error = e  # a file the save moved away, not a broken folder
        else:
            if not _replaced_since(folder, seen):
                return result
            error = None
        if attempt < READ_TRIES:
            logger.info("%s was replaced by a save while it was read: reading it again", folder)
    raise ModelFolderError(f"{folder} was replaced by a save {READ_TRIES} times while it loaded; load it once the "
                           "process saving into it pauses") from error


def _replaced_since(folder: Path, seen: tuple[int, ...] | None) -> bool:
    if not wait_for_swap(folder):  # gone for good: not a save under way
        return seen is not None
    return folder_identity(folder) != seen


def folder_identity(folder: str | os.PathLike) -> tuple[int, ...] | None:
    """Which save a path names now: the folder's device and inode (a save swaps a new folder in), and the inode
    and modification time of its ``modules.json`` (else ``config.json``), which every save writes anew (a folder
    filled in place too) and nothing else writes: a freed inode number can come back with the next save's folder.
    None for a missing folder."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    for name in ("modules.json", "config.json"):
        try:
            f = os.stat(os.path.join(folder, name))
        except OSError:
            continue
        return st.st_dev, st.st_ino, f.st_ino, f.st_mtime_ns
    return st.st_dev, st.st_ino


def interrupted_write_hint(target: str | os.PathLike) -> str:
    """For a missing folder: where a write between ``atomic_folder``'s two renames left it (moved aside as
    ``.NAME.old-PID``), as a sentence to append to the error; '' when there is no such folder."""
    target = Path(target).expanduser().absolute()
    aside = _moved_aside(target)
    if not aside:
        return ""
    if _writer_alive(aside[-1]):
        return (f"; a save into it (process {aside[-1].name.rpartition('-')[2]}) has moved the folder aside as "
                f"{aside[-1]} and has not put the new one in place yet: load it again once that save is done")
    return (f"; a save or export into it was stopped between moving the folder aside and putting the new one in "
            f"place: the folder as it was is {aside[-1]} (rename it back to {target.name} to use it)")


def is_work_entry(name: str) -> bool:
    """Whether ``name`` is a work folder's (``WORK_FOLDERS``): never a model's file, never the user's."""
    import fnmatch

    return any(fnmatch.fnmatchcase(name, pattern) for pattern in WORK_FOLDERS)


def _fill_in_place(tmp: Path, target: Path) -> None:
    """Make ``target`` hold what ``tmp`` holds (``tmp`` beside or inside it), then remove ``tmp``.

    The new entries first come whole into a work folder inside ``target`` (renamed, or copied where ``tmp`` is on
    another file system, as beside a mount point): a disk that fills up meanwhile leaves ``target`` as it was.
    The rest is renames within ``target``, undone on an error. Work folders in ``target`` (another write's,
    under way) are left alone."""
    for work in (f".{target.name}.tmp-*", f".{target.name}.old-*"):
        remove_abandoned(target, work)  # a crashed fill's
    staged = tmp if tmp.parent == target else Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target))
    try:
        if staged is not tmp:
            for entry in list(tmp.iterdir()):
                shutil.move(str(entry), str(staged / entry.name))
        _swap_entries(staged, target)
    except BaseException:
        if staged is not tmp and staged.exists():
            _make_writable(staged)
            shutil.rmtree(staged, ignore_errors=True)
        raise
    staged.rmdir()
    if staged is not tmp:
        tmp.rmdir()


def _swap_entries(staged: Path, target: Path) -> None:
    """Renames within ``target``'s file system: its entries (work folders aside) into a folder inside it, those
    of ``staged`` into their place, then that folder goes. Renames need no room on the disk; one that fails
    has the earlier ones undone."""
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target))
    done: list[tuple[Path, Path]] = []
    try:
        for entry in list(target.iterdir()):
            if not is_work_entry(entry.name):
                _move(entry, aside / entry.name)
                done.append((entry, aside / entry.name))
        for entry in list(staged.iterdir()):
            _move(entry, target / entry.name)
            done.append((entry, target / entry.name))
    except BaseException:
        for src, dst in reversed(done):
            try:
                _move(dst, src)
            except OSError:
                pass
        try:
            aside.rmdir()  # empty unless an undo failed: then what it holds is kept
        except OSError:
            pass
        raise
    _make_writable(aside)
    shutil.rmtree(aside, ignore_errors=True)


def _other_disk(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_dev != os.stat(b).st_dev
    except OSError:
        return False


def _move(src: Path, dst: Path) -> None:
    """``os.replace`` for an entry that changes folders. Linux lets a user move a folder into another only with
    write access to it (its ``..`` is rewritten): a read-only folder (a model copied from a read-only store, the
    user's own) gets its owner's write bit for the move, and its mode back after."""
    mode = None
    if src.is_dir() and not src.is_symlink():
        mode = src.stat().st_mode
        if mode & stat.S_IWUSR:
            mode = None
        else:
            os.chmod(src, mode | stat.S_IWUSR)
    try:
        os.replace(src, dst)
    except BaseException:
        if mode is not None:
            os.chmod(src, mode)
        raise
    if mode is not None:
        os.chmod(dst, mode)


def _working_dir() -> Path | None:
    try:
        return Path(os.path.realpath(os.getcwd()))
    except OSError:  # the working directory was removed
        return None


@contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``target`` and rename it over ``target`` once written."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        give_usual_mode(tmp)  # mkstemp makes 0600
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def give_usual_mode(path: str | os.PathLike) -> None:
    """Give a file written with private permissions (mkstemp's, onnx's data files: 0600) the mode ``open()``
    would have given it under the process umask."""
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    """The process umask, read without changing it where the OS says it (Linux), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
