"""resty_ffi._log: Python's print(), sys.stderr and logging into nginx's
error.log, written by nginx itself.

Both sys.stdout and sys.stderr are replaced by writers that hand whole
lines to the core (`resty_ffi.log`), which queues them for the worker's
dispatcher; nginx then writes them with `ngx.errlog.raw_log` at their
level, so they carry nginx's format, obey the `error_log` level and follow
`nginx -s reopen`. Each line is tagged `ffi_python3:`:

    2024/05/01 12:00:00 [notice] 123#123: ffi_python3: hello from Python

stdout lines are logged at `notice`, stderr lines (tracebacks, warnings)
at `error`. What one write ending in a newline completes is one log entry
(`print(multi_line_text)` too): its lines are joined with " | ", so a
traceback is one entry, not one per line. Partial lines are buffered per
thread, so lines of concurrent threads never mix. Uncaught exceptions of
threads and tracebacks of load errors are one entry each as well. `logging` records that reach no handler of the
application's (Python's "last resort") and records sent to
`resty_ffi.LogHandler()` are logged at their own level (CRITICAL -> crit,
ERROR -> error, WARNING -> warn, INFO -> info, DEBUG -> debug).
"""

import io
import logging
import threading

import resty_ffi

CRIT, ERR, WARN, NOTICE, INFO, DEBUG = 3, 4, 5, 6, 7, 8


# Complete lines pending in one thread's buffer are written anyway past
# this size (a writer that never ends a line must not grow memory).
_MAX_PENDING = 16384


def _emit(level, text):
    """Writes `text` as one entry; several lines are joined with " | "."""
    if "\n" in text:
        text = " | ".join(l.strip() for l in text.split("\n") if l.strip())
    resty_ffi.log(level, "ffi_python3: " + text.rstrip("\r"))


def log_exception(exc, level=ERR):
    """Logs `exc` with its traceback as one entry."""
    import traceback
    _emit(level, "".join(traceback.format_exception(exc)).rstrip())


class ErrorLogWriter(io.TextIOBase):
    """A text stream that sends each line to nginx's error.log."""

    def __init__(self, level):
        super().__init__()
        self._level = level
        self._local = threading.local()

    @property
    def encoding(self):
        return "utf-8"

    @property
    def errors(self):
        return "backslashreplace"

    def writable(self):
        return True

    def isatty(self):
        return False

    def fileno(self):
        # for code that writes to the raw fd (faulthandler): nginx points
        # fd 2 at its error_log file
        return 2

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not %s" % type(s).__name__)
        buf = getattr(self._local, "buf", "") + s
        if buf.endswith("\n"):
            self._local.buf = ""
            _emit(self._level, buf[:-1])
        elif len(buf) > _MAX_PENDING and "\n" in buf:
            done, _, rest = buf.rpartition("\n")
            self._local.buf = rest
            _emit(self._level, done)
        else:
            self._local.buf = buf
        return len(s)

    def flush(self):
        buf = getattr(self._local, "buf", "")
        if buf:
            self._local.buf = ""
            _emit(self._level, buf)


class LogHandler(logging.Handler):
    """A logging handler that writes each record at its nginx level."""

    def emit(self, record):
        try:
            msg = self.format(record)
        except Exception:  # a bad format string must not break the caller
            self.handleError(record)
            return
        if record.levelno >= logging.CRITICAL:
            level = CRIT
        elif record.levelno >= logging.ERROR:
            level = ERR
        elif record.levelno >= logging.WARNING:
            level = WARN
        elif record.levelno >= logging.INFO:
            level = INFO
        else:
            level = DEBUG
        _emit(level, msg)


def install():
    import sys
    sys.stdout = ErrorLogWriter(NOTICE)
    sys.stderr = ErrorLogWriter(ERR)
    last_resort = LogHandler(logging.WARNING)
    logging.lastResort = last_resort
    resty_ffi.LogHandler = LogHandler

    def excepthook(exc_type, exc, tb):
        log_exception(exc)

    def thread_excepthook(args):
        if args.exc_type is not SystemExit:
            name = args.thread.name if args.thread else "?"
            import traceback
            _emit(ERR, "exception in thread %s: %s" % (name, "".join(
                traceback.format_exception(args.exc_value)).rstrip()))
    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook
