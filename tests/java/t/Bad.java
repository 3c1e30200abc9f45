/* Test runtime: every way a load can go wrong. */
package t;

import java.util.function.Function;

public class Bad {
    public static int throwsInInit(String cfg, long tq) {
        throw new IllegalStateException("cannot reach the backend");
    }

    public static int returnsSeven(String cfg, long tq) {
        return 7;
    }

    public static String wrongSignature(String cfg) {
        return cfg;
    }

    public int notStatic(String cfg, long tq) {
        return 0;
    }

    public static Function<byte[], byte[]> returnsNull(String cfg) {
        return null;
    }

    static {
        if (Boolean.getBoolean("t.bad.never")) {
            throw new Error("never");
        }
    }
}
