"""Interrupted and timed-out work: Ctrl-C, SIGTERM (`timeout`, `kill`, a cancelled job) and a signal handler's
TimeoutError (a request deadline, Celery's soft time limit) reach the caller as themselves and leave no work
folders or model copies behind. A child signalled waits for a marker line it prints first, not for a time."""

import errno
import os
import signal
import subprocess
import sys
import textwrap

import pytest


def test_interrupted_modules_load_leaves_no_model_copy_in_the_cache(tiny_model_dir, tmp_path, monkeypatch):
    """SentenceTransformer(modules=[...], backend='onnx') saves the modules to <cache>/st_onnx_graphs/modules/
    through a staging folder; interrupted (or failing) after the save, that staging copy must not stay behind."""
    from st_onnx import SentenceTransformer
    import st_onnx.fingerprint as fingerprint

    modules = list(SentenceTransformer(str(tiny_model_dir), device="cpu").torch_modules)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fingerprint, "folder_fingerprint", interrupted)  # hashing the saved copy: Ctrl-C
    with pytest.raises(KeyboardInterrupt):
        SentenceTransformer(modules=modules, backend="onnx", cache_folder=str(tmp_path / "cache"))
    root = tmp_path / "cache" / "st_onnx_graphs" / "modules"
    assert sorted(p.name for p in root.iterdir()) == []  # was ['modules-XXXX'], a full model folder, for good


CHILD = textwrap.dedent("""
    import sys, time
    import st_onnx.layout as layout
    import st_onnx.folders as folders
    from st_onnx import cli
    real = folders.copy_model_folder
    def slow_copy(src, dst):  # the export's graph is built; its copy is being assembled when the signal comes
        real(src, dst)
        print("MARK", flush=True)
        time.sleep(60)
    folders.copy_model_folder = slow_copy
    sys.exit(cli.main(["export", sys.argv[1], sys.argv[2]]))
""")


def test_cli_export_terminated_leaves_no_work_folders(tiny_model_dir, tmp_path):
    """`timeout`, `kill`, `docker stop` and CI cancellation send SIGTERM: the CLI cleans up as on Ctrl-C (it was
    killed, leaving '.out.export-*' and '.out.tmp-*', the graph and a copy of the model, for a day)."""
    src = tiny_model_dir
    out = tmp_path / "out"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    p = subprocess.Popen([sys.executable, str(script), str(src), str(out)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        if line.startswith("MARK"):
            p.send_signal(signal.SIGTERM)
            break
    _, err = p.communicate(timeout=60)
    left = sorted(x.name for x in tmp_path.iterdir() if x.name.startswith("."))
    assert left == []
    assert not out.exists()
    assert p.returncode == 128 + signal.SIGTERM, err
    assert "terminated: nothing written" in err


def test_a_timeout_raised_during_a_run_reaches_the_caller_as_itself(tiny_model_copy, monkeypatch):
    """A SIGALRM handler (or Celery's soft time limit) raises its exception inside InferenceSession.run when a run
    is in the main thread: the onnx backend's serial path (intra_op_num_threads set, a 1-core container, CUDA).
    The caller's `except TimeoutError` must see it, not a GraphRunError saying ONNX Runtime failed on the batch."""
    from st_onnx import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu",
                                onnx_options={"intra_op_num_threads": 1})
    session = model._backend._encoder.session

    def run(*args, **kwargs):
        raise TimeoutError("request deadline")  # what the handler raises from inside the run

    monkeypatch.setattr(session._session, "run", run)
    with pytest.raises(TimeoutError):  # was GraphRunError('ONNX Runtime failed on a batch ... (TimeoutError: ...)')
        model.encode(["a text", "another text"])


def test_a_timeout_while_waiting_for_the_folder_lock_is_not_swallowed(tmp_path, monkeypatch):
    """folders.locked waits in flock(); a signal handler's TimeoutError raised there must propagate, not be taken
    for 'this file system has no locks' (the write then went ahead unlocked, past the caller's deadline)."""
    import fcntl

    from st_onnx import folders

    def flock(fd, op):
        raise TimeoutError("deadline")  # what a SIGALRM handler raises while flock() waits

    monkeypatch.setattr(fcntl, "flock", flock)
    entered = []
    with pytest.raises(TimeoutError):
        with folders.locked(tmp_path):
            entered.append(True)
    assert entered == []


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.ENOLCK, errno.EBADF])
def test_a_file_system_without_locks_is_written_unlocked(tmp_path, monkeypatch, code):
    """Lustre mounted without -o flock answers flock() with ENOSYS, NFS with ENOLCK or EBADF: the write goes ahead
    unlocked (ENOSYS failed it, once the timeout fix above let only a list of errnos through)."""
    import fcntl

    from st_onnx import folders

    def flock(fd, op):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", flock)
    entered = []
    with folders.locked(tmp_path):
        entered.append(True)
    assert entered == [True]


@pytest.mark.parametrize("spelled", ["absolute", "bare name"])
def test_a_folder_left_aside_by_a_killed_save_is_named_by_the_load_that_misses_it(tiny_model_dir, tmp_path,
                                                                                 monkeypatch, capsys, spelled):
    """SIGKILL between atomic_folder's two renames leaves the model at .NAME.old-PID and nothing at NAME: the
    next load said the folder did not exist (or, for a bare name, that the Hub could not be reached)."""
    import shutil

    from st_onnx import SentenceTransformer, cli
    from st_onnx.errors import ModelNotFoundError

    shutil.copytree(tiny_model_dir, tmp_path / ".model.old-999999999")  # a kill there leaves this (a dead PID)
    monkeypatch.chdir(tmp_path)
    name = str(tmp_path / "model") if spelled == "absolute" else "model"
    with pytest.raises(ModelNotFoundError, match=r"does not exist; a save or export into it was stopped .*"
                                                 r"\.model\.old-999999999 \(rename it back to model"):
        SentenceTransformer(name, device="cpu")
    capsys.readouterr()
    assert cli.main(["export", name, str(tmp_path / "out")]) != 0
    assert "rename it back to model" in capsys.readouterr().err


def test_the_hint_names_only_the_missing_folders_own_folder_set_aside(tmp_path):
    """The folder's name went into a glob pattern unescaped: a missing 'm[ab]' was said to be at '.ma.old-1',
    another folder's (found by the review of the change)."""
    from st_onnx import folders

    (tmp_path / ".ma.old-1").mkdir()
    assert folders.interrupted_write_hint(tmp_path / "m[ab]") == ""
    (tmp_path / ".m[ab].old-999999999").mkdir()
    assert ".m[ab].old-999999999 (rename it back to m[ab]" in folders.interrupted_write_hint(tmp_path / "m[ab]")


def test_a_load_between_a_live_saves_two_renames_waits_for_it(tiny_model_dir, tmp_path, monkeypatch):
    """A load in the microseconds between a save's two renames said the save was stopped and advised renaming
    the old folder back, which would fail that save (found by a review of concurrent processes). While the saving
    process lives, the load waits for the new folder; past the wait, it says a save is under way."""
    import os
    import shutil
    import threading

    from st_onnx import SentenceTransformer, folders
    from st_onnx.errors import ModelNotFoundError

    aside = tmp_path / f".model.old-{os.getpid()}"  # a live process's save
    shutil.copytree(tiny_model_dir, aside)
    monkeypatch.setattr(folders, "SWAP_WAIT_S", 0.2)
    with pytest.raises(ModelNotFoundError, match=rf"a save into it \(process {os.getpid()}\) has moved the folder "
                                                 r"aside .*load it again once that save is done"):
        SentenceTransformer(str(tmp_path / "model"), device="cpu")
    monkeypatch.setattr(folders, "SWAP_WAIT_S", 30.0)
    staged = shutil.copytree(tiny_model_dir, tmp_path / ".model.tmp-x")
    threading.Timer(0.3, os.rename, (staged, tmp_path / "model")).start()  # the save's second rename
    assert SentenceTransformer(str(tmp_path / "model"), device="cpu").encode("a b").shape == (32,)


def test_a_folder_moved_aside_long_ago_under_a_pid_now_alive_is_named_as_stopped(tiny_model_dir, tmp_path,
                                                                                  monkeypatch):
    """A killed save's PID can be another live process's now (PID 1 in containers): the load waited, then said a
    save was under way, never the recovery (found by the review of the change). Moved aside minutes ago, it is
    a stopped save."""
    import os
    import shutil
    import time

    from st_onnx import SentenceTransformer, folders
    from st_onnx.errors import ModelNotFoundError

    shutil.copytree(tiny_model_dir, tmp_path / f".model.old-{os.getpid()}")
    monkeypatch.setattr(folders, "_now", lambda: time.time() + 600)
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError, match=r"rename it back to model"):
        SentenceTransformer(str(tmp_path / "model"), device="cpu")
    assert time.monotonic() - start < 1.0
