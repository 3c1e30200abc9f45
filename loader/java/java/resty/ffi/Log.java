/*
 * Lines in nginx's error.log, in nginx's own format
 * ("2024/05/01 12:00:00 [warn] 123#124: ffi_java: text"). The loader also
 * sends System.out (notice) and System.err (error) there, line by line.
 */
package resty.ffi;

public final class Log {
    public static final int ERROR = 3, WARN = 4, NOTICE = 5, INFO = 6, DEBUG = 7;

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
