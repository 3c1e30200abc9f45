/*
 * Lines in nginx's error.log, written by nginx itself at their level
 * (through the core's resty_ffi_log: they obey the error_log level and
 * follow nginx -s reopen). Levels are nginx's: 4 error, 5 warn, 6 notice,
 * 7 info, 8 debug. The loader also sends System.out (notice) and
 * System.err (error) there, line by line.
 */
package resty.ffi;

public final class Log {
    public static final int ERROR = 4, WARN = 5, NOTICE = 6, INFO = 7, DEBUG = 8;

    private Log() {}

    public static void log(int level, String msg) {
        Native.log(level, msg);
    }

    public static void error(String msg) {
        Native.log(ERROR, msg);
    }

    public static void warn(String msg) {
        Native.log(WARN, msg);
    }

    public static void notice(String msg) {
        Native.log(NOTICE, msg);
    }

    public static void info(String msg) {
        Native.log(INFO, msg);
    }
}
