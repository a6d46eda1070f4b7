"""The project's errors: a UserError is a mistake the user fixes, reported as one line with an exit
code per kind; `run_main` turns it (and a signal outside the training loop) into that line."""
import os
import signal
import sys


class UserError(Exception):
    """A problem the user fixes (data, model, settings, output directory): `run_main` reports it as one
    line, `error: <where>: <what> (<how to fix>)`, and exits with `exit_code`, without a traceback."""
    exit_code = 1


class ConfigError(UserError, ValueError):
    """An unknown setting or a value of the wrong type."""
    exit_code = 2


def run_main(main) -> None:
    """Run a script's main(); a UserError becomes one line on stderr and its exit code.
    INSTRUCT_DEBUG=1 shows the traceback instead. SIGTERM / SIGINT outside the training loop (which
    handles them itself: trainer/signals.py StopOnSignal) stop with one line and exit
    128 + the signal."""
    signals = (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.signal(s, _stop_outside_loop) for s in signals}
    try:
        main()
    except UserError as e:
        if os.environ.get("INSTRUCT_DEBUG", "0") not in ("", "0"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _stop_outside_loop(signum, frame):
    print(f"\nstopped by {signal.Signals(signum).name} outside the training loop (files already "
          "written are complete: saves are written aside and renamed in)", file=sys.stderr,
          flush=True)
    sys.exit(128 + signum)
