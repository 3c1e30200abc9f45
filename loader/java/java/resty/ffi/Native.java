/*
 * The natives the loader (libffi_java.so) registers with RegisterNatives
 * when it creates the JVM. Package-private: runtimes use Queue, Task and
 * Log, which keep raw addresses from being misused (a task is answered
 * once, a queue is one the loader handed out).
 */
package resty.ffi;

final class Native {
    private Native() {}

    /** Blocks for the next task of queue tq; 0 once the queue is finished. */
    static native long poll(long tq);

    /** The next task if one waits right now, else 0 (also once finished). */
    static native long tryPoll(long tq);

    /** True once the queue is finished and drained. */
    static native boolean finished(long tq);

    /** True if tq is a queue the loader handed to a runtime's init. */
    static native boolean isQueue(long tq);

    /** The request of a live task (null for a nil request from Lua). */
    static native byte[] request(long task);

    /** Answers a live task; rsp may be null (nil in Lua). */
    static native void respond(long task, int rc, byte[] rsp);

    /**
     * Answers a live task with rc and "name: message" ("name" when message
     * is null), joined outside the Java heap: the answer of last resort
     * when the heap is full.
     */
    static native void respondError(long task, int rc, String name, String message);

    /**
     * How many times the JVM ran out of memory (heap, threads) since it was
     * created, as JVMTI reported it to the loader; 0 without JVMTI.
     */
    static native long outOfMemoryEvents();

    /**
     * Offers data as the next chunk of a live task's answer (copied):
     * 0 taken, 1 nobody reads any more, -1 answered already. Blocks while
     * the stream's window is full.
     */
    static native int chunk(long task, byte[] data);

    /** As chunk, never blocking: 2 when the window is full and data was NOT taken. */
    static native int tryChunk(long task, byte[] data);

    /** True once nobody waits for the task's answer (or it was answered). */
    static native boolean cancelled(long task);

    /**
     * Waits up to timeoutMs for queue tq's space fd (a stream of it made
     * room or was cancelled) and resets it; true when it was readable.
     */
    static native boolean awaitSpace(long tq, int timeoutMs);

    /** Writes one line to nginx's error.log at level (see Log). */
    static native void log(int level, String msg);

    /** Names the calling OS thread (top -H, /proc/PID/task/TID/comm). */
    static native void nameThread(String name);
}
