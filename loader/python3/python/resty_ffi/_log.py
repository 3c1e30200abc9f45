"""resty_ffi._log: Python's print() and sys.stderr into nginx's error.log.

nginx points a worker's stderr (fd 2) at its error_log file; its stdout
usually goes nowhere. Both sys.stdout and sys.stderr are replaced by
writers that emit whole lines to fd 2 in nginx's format, so `print`,
tracebacks, warnings and `logging` handlers writing to a stream end up in
error.log, each line tagged `ffi_python3:`:

    2024/05/01 12:00:00 [notice] 123#124: ffi_python3: hello from Python

stdout lines are logged at `notice`, stderr lines at `error`. Partial
lines are buffered per thread, so lines of concurrent threads never mix.
"""

import io
import os
import sys
import threading
import time


class ErrorLogWriter(io.TextIOBase):
    """A text stream that writes each line to fd 2 as an error.log line."""

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
        return 2

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not %s" % type(s).__name__)
        buf = getattr(self._local, "buf", "") + s
        *lines, rest = buf.split("\n")
        self._local.buf = rest
        for line in lines:
            self._emit(line)
        return len(s)

    def flush(self):
        buf = getattr(self._local, "buf", "")
        if buf:
            self._local.buf = ""
            self._emit(buf)

    def _emit(self, line):
        text = "%s [%s] %d#%d: ffi_python3: %s\n" % (
            time.strftime("%Y/%m/%d %H:%M:%S"), self._level, os.getpid(),
            threading.get_native_id(), line.rstrip("\r"))
        data = text.encode("utf-8", "backslashreplace")
        while data:
            try:
                n = os.write(2, data)
            except InterruptedError:
                continue
            except OSError:
                return
            data = data[n:]


def install():
    sys.stdout = ErrorLogWriter("notice")
    sys.stderr = ErrorLogWriter("error")
