"""One run per output directory: out_dir/.lock, an flock held until the process ends, naming the
holder. The kernel drops the flock when its process dies, so a killed run never blocks the next."""
import atexit
import fcntl
import os
import socket
import sys
import time

from utils import UserError


class OutDirLocked(UserError):
    """Another live run holds the output directory."""
    exit_code = 6


_held = {}  # realpath of a lock file -> open file object, for locks this process holds


def lock_out_dir(out_dir: str) -> str:
    """Take out_dir/.lock (an flock held until the process ends; the file names the holder's PID).

    A second run on the same directory raises OutDirLocked naming the holder. The kernel drops the
    flock when its process dies, so a lock file left by a killed run is taken over (with a note).
    Taking a lock this process already holds does nothing. Returns the lock file's path."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise OutDirLocked(f"{out_dir}: is a file, not a directory (give another --out_dir)")
    os.makedirs(out_dir, exist_ok=True)
    link = os.path.join(out_dir, ".lock")
    if os.path.islink(link):  # writing through it would overwrite its target; release, delete it
        raise OutDirLocked(f"{link}: is a symbolic link; a lock is never followed (delete it)")
    path = os.path.join(os.path.realpath(out_dir), ".lock")
    if path in _held:
        return path
    while True:
        try:  # O_NOFOLLOW: a link made after the check above is refused too
            flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
            f = os.fdopen(os.open(path, flags, 0o644), "a+")
        except OSError as e:
            raise OutDirLocked(f"{path}: cannot open the lock file ({e.strerror}; delete it "
                               "if it is a link)") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown process"
            f.close()
            raise OutDirLocked(
                f"{out_dir}: in use by another run ({holder}) (wait for it to finish, stop it, or "
                "give this run another --out_dir)"
            ) from None
        if os.path.exists(path) and os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
            break  # locked the file that is still at `path` (not one a finishing run just deleted)
        f.close()
    f.seek(0)
    previous = f.read().strip()
    if previous:
        print(
            f"note: {out_dir}/.lock was left by a run that is no longer running ({previous}); taking it over"
        )
    f.seek(0)
    f.truncate()
    f.write(
        f"PID {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: "
        f"{' '.join([os.path.basename(sys.executable)] + sys.argv)}\n"
    )
    f.flush()
    _held[path] = f
    atexit.register(release_lock, path)
    return path


def release_lock(path: str) -> None:
    """Release a lock this process holds (done at exit; the kernel drops it however the process ends)."""
    f = _held.pop(path, None)
    if f is not None:
        # removed while still locked: a run waiting on the old file notices (see above)
        os.remove(path)
        f.close()
