/* Test runtime: a class whose static initialiser throws. */
package t;

public class Exploding {
    static {
        if (true) {
            throw new IllegalStateException("static init failed");
        }
    }

    public static int init(String cfg, long tq) {
        return 0;
    }
}
