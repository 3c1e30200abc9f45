"""resty_ffi._log: Python's print(), sys.stderr and logging into nginx's
error.log, written by nginx itself.

Both sys.stdout and sys.stderr are replaced by writers that hand whole
lines to the core (`resty_ffi.log`), which queues them for the worker's
dispatcher; nginx then writes them with `ngx.errlog.raw_log` at their
level, so they carry nginx's format, obey the `error_log` level and follow
`nginx -s reopen`. Each line is tagged `ffi_python3:`:

    2024/05/01 12:00:00 [notice] 123#123: ffi_python3: hello from Python

stdout lines are logged at `notice`, stderr lines (tracebacks, warnings)
at `error`. Partial lines are buffered per thread, so lines of concurrent
threads never mix. `logging` records that reach no handler of the
application's (Python's "last resort") and records sent to
`resty_ffi.LogHandler()` are logged at their own level (CRITICAL -> crit,
ERROR -> error, WARNING -> warn, INFO -> info, DEBUG -> debug).
"""

import io
import logging
import threading

import resty_ffi

CRIT, ERR, WARN, NOTICE, INFO, DEBUG = 3, 4, 5, 6, 7, 8


def _emit(level, line):
    resty_ffi.log(level, "ffi_python3: " + line.rstrip("\r"))


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
        *lines, rest = buf.split("\n")
        self._local.buf = rest
        for line in lines:
            _emit(self._level, line)
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
        for line in msg.split("\n"):
            _emit(level, line)


def install():
    import sys
    sys.stdout = ErrorLogWriter(NOTICE)
    sys.stderr = ErrorLogWriter(ERR)
    last_resort = LogHandler(logging.WARNING)
    logging.lastResort = last_resort
    resty_ffi.LogHandler = LogHandler
