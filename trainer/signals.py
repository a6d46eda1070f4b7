"""A clean stop on SIGTERM / SIGINT: inside the training loop a signal only asks for a stop, which
the loop honours after the current step by writing a checkpoint (a second signal stops at once)."""
import shlex
import signal
import sys
import threading


class Preempted(SystemExit):
    """Raised after a SIGTERM / SIGINT once the checkpoint is written; exits with 128 + the signal number."""


def resume_command() -> str:
    """This process's command line with --resume True (any earlier --resume setting dropped)."""
    args, skip = [], False
    for a in sys.argv[1:]:
        if skip or a == "--resume":
            skip = not skip
            continue
        if not a.startswith("--resume="):
            args.append(a)
    return shlex.join(["python", sys.argv[0], *args, "--resume", "True"])


class StopOnSignal:
    """Inside `with`, SIGTERM and SIGINT only record that a stop was asked for (`signum`); the loop
    checks it after each step. A second signal stops at once, exiting with 128 + its number."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __enter__(self):
        self.signum, self.previous = None, {}
        # Python allows handlers only there
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        return self

    def handle(self, signum, frame):
        if self.signum is not None:  # the checkpoints written so far are complete
            print(f"\n{signal.Signals(signum).name} received again: stopping at once, without a "
                  "checkpoint of this step (the last complete checkpoint is kept)",
                  file=sys.stderr, flush=True)
            raise Preempted(128 + signum)
        self.signum = signum
        print(
            f"\n{signal.Signals(signum).name} received: finishing the current step, then writing a checkpoint "
            "(send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        return False
