/*
 * An OutputStream that sends each complete line to error.log at one level:
 * System.out and System.err of the embedded JVM (a worker's stdout goes
 * nowhere, and raw stderr lines would lack nginx's prefix).
 */
package resty.ffi;

import java.io.ByteArrayOutputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;

final class LineStream extends OutputStream {
    private final int level;
    private final ByteArrayOutputStream buf = new ByteArrayOutputStream();

    LineStream(int level) {
        this.level = level;
    }

    @Override
    public synchronized void write(int b) {
        if (b == '\n') {
            flushLine();
        } else {
            buf.write(b);
        }
    }

    @Override
    public synchronized void write(byte[] b, int off, int len) {
        for (int i = off; i < off + len; i++) {
            write(b[i]);
        }
    }

    private void flushLine() {
        String line = buf.toString(StandardCharsets.UTF_8);
        buf.reset();
        Native.log(level, "ffi_java: " + line);
    }
}
