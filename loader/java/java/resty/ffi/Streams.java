/*
 * Streaming answers of handler-style runtimes, and the thread that notices
 * when their reader has gone.
 *
 * A handler (or the CompletionStage it returns) may answer with an
 * Iterator<byte[]>, a Stream<byte[]> (any BaseStream) or a
 * Flow.Publisher<byte[]>: each element is one chunk of the answer, sent as
 * it comes (PullStream for the first two, PushStream for a Publisher); the
 * task ends rc 0 after the last, or rc 1 with "Class: message" when the
 * source fails (the chunks before it are delivered).
 *
 * A producer learns that nobody reads any more (the stream was closed, the
 * call timed out, the client went away) when its next chunk is refused. A
 * source that is slow between elements would learn it late, so every open
 * stream is registered here and one thread per JVM (java-streams) asks the
 * core every WATCH_NS whether each was cancelled, and cancels it then: the
 * Stream is closed (its onClose handlers run), the thread pulling is
 * interrupted, the subscription cancelled. The thread sleeps while no
 * stream is open. Checking is one native call per open stream, no heap.
 */
package resty.ffi;

import java.util.Iterator;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.Flow;
import java.util.concurrent.locks.LockSupport;
import java.util.stream.BaseStream;

final class Streams {
    static final long WATCH_NS = 20_000_000L;
    private static final Set<Open> OPEN = ConcurrentHashMap.newKeySet();
    private static volatile Thread watcher;

    private Streams() {}

    /** One streaming answer in flight. */
    abstract static class Open {
        final Task task;

        Open(Task task) {
            this.task = task;
        }

        /** Nobody reads any more: stop the source. Idempotent; a no-op once ended. Never throws. */
        abstract void cancel();
    }

    /** Whether a handler's answer is one the loader streams. */
    static boolean isStream(Object v) {
        return v instanceof Iterator || v instanceof BaseStream || v instanceof Flow.Publisher;
    }

    /** The text of the error for an element that is no byte[]. */
    static String badElement(Object x) {
        return "resty.ffi: a stream element must be byte[], got "
                + (x == null ? "null" : x.getClass().getName());
    }

    /** Watches s from now until closed(s). */
    static void open(Open s) {
        OPEN.add(s);
        Thread w = watcher;
        if (w == null) {
            w = startWatcher();
        }
        if (w != null) {
            LockSupport.unpark(w);
        }
    }

    /** s ended: no longer watched. */
    static void closed(Open s) {
        OPEN.remove(s);
    }

    /** How many streams are open (tests, logs). */
    static int count() {
        return OPEN.size();
    }

    private static synchronized Thread startWatcher() {
        if (watcher == null) {
            try {
                Thread t = new Thread(Streams::watch, "java-streams");
                t.setDaemon(true);
                t.start();
                watcher = t;
            } catch (Throwable e) {
                // no thread now (out of memory): chunks still tell producers; try again next open
            }
        }
        return watcher;
    }

    private static void watch() {
        try {
            Native.nameThread("java-streams");
        } catch (Throwable e) {
            // keeps the JVM's name
        }
        while (true) {
            try {
                if (OPEN.isEmpty()) {
                    LockSupport.park(Streams.class);
                } else {
                    LockSupport.parkNanos(Streams.class, WATCH_NS);
                }
                for (Open s : OPEN) {
                    if (s.task.cancelled()) {
                        OPEN.remove(s);
                        s.cancel();
                    }
                }
            } catch (Throwable e) {
                // no heap for the iterator: next round
            }
        }
    }
}
