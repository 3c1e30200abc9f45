/*
 * The poll loop behind the handler style.
 *
 * Pollers are platform threads (a native call that blocks would pin a
 * virtual thread's carrier). The rule is "one thread is always polling":
 * a poller that takes a task first makes sure another thread polls
 * (reusing an idle one or starting one, up to -Dresty.ffi.threads, default
 * 256), then runs the handler itself, so a call pays no hand-over between
 * threads. A sync handler that blocks ties up only its own thread; when
 * calls stop, spare pollers end until two remain.
 *
 * A handler whose declared return type is Function<byte[], CompletionStage<..>>
 * is applied on the poller and answered when its stage completes, from
 * whatever thread completes it: many calls are in flight with few threads.
 * Any result that is a CompletionStage is treated so, whatever the
 * declared type.
 *
 * -Dresty.ffi.executor=virtual (JDK 21+) hands each sync call from the
 * poller to a new virtual thread instead: no thread bound for handlers that
 * block, at the price of a hand-over per call (waking a parked carrier
 * thread). On an older JDK the setting is reported and ignored.
 *
 * Errors: an exception (or a failed stage) answers rc 1 with
 * "ExceptionClass: message" (Throwable.toString()) and logs the stack
 * trace; the runtime keeps serving. The queue finishing (rt:__unload())
 * ends every poller once the calls already queued are served; answers of
 * stages still running arrive later and are delivered as usual.
 */
package resty.ffi;

import java.util.concurrent.CompletionException;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Executor;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.Function;

final class Serve {
    static final int MAX_THREADS = Integer.getInteger("resty.ffi.threads", 256);
    static final int SPARE = 2;
    static final Executor VIRTUAL = virtualExecutor();

    private final Function<byte[], Object> handler;
    private final boolean async;
    private final Queue queue;
    private final String name;
    private final ClassLoader loader;
    private final AtomicInteger polling = new AtomicInteger();
    private final AtomicInteger threads = new AtomicInteger();
    private final AtomicInteger nextId = new AtomicInteger();

    private Serve(Function<byte[], Object> handler, boolean async, Queue queue, String name, ClassLoader loader) {
        this.handler = handler;
        this.async = async;
        this.queue = queue;
        this.name = name;
        this.loader = loader;
    }

    private static Executor virtualExecutor() {
        if (!"virtual".equals(System.getProperty("resty.ffi.executor"))) {
            return null;
        }
        try {
            return (Executor) Executors.class.getMethod("newVirtualThreadPerTaskExecutor").invoke(null);
        } catch (ReflectiveOperationException e) {
            Log.warn("ffi_java: -Dresty.ffi.executor=virtual needs JDK 21+ (this is "
                    + Runtime.version() + "): handlers run on the pollers");
            return null;
        }
    }

    static void start(Function<byte[], Object> handler, boolean async, Queue queue, String name, ClassLoader loader) {
        Serve s = new Serve(handler, async, queue, name, loader);
        if (!s.spawn()) {
            throw new IllegalStateException("cannot start a poller thread");
        }
    }

    /** Starts one more poller unless at the bound; true if started. */
    private boolean spawn() {
        while (true) {
            int n = threads.get();
            if (n >= MAX_THREADS) {
                return false;
            }
            if (threads.compareAndSet(n, n + 1)) {
                break;
            }
        }
        polling.incrementAndGet();
        int id = nextId.getAndIncrement();
        Thread t = new Thread(() -> run(id), "jv" + id + "-" + name);
        t.setDaemon(true);
        t.setContextClassLoader(loader);
        try {
            t.start();
        } catch (Throwable e) {
            polling.decrementAndGet();
            threads.decrementAndGet();
            Log.error("ffi_java: " + name + ": cannot start a poller: " + e);
            return false;
        }
        return true;
    }

    private void run(int id) {
        Native.nameThread(("jv" + id + "-" + name));
        try {
            while (true) {
                // polling was counted for us before we got here
                Task task = queue.poll();
                int left = polling.decrementAndGet();
                if (task == null) {
                    return;
                }
                if (left == 0) {
                    spawn();
                }
                if (VIRTUAL != null && !async) {
                    VIRTUAL.execute(() -> handle(task));
                } else {
                    handle(task);
                }
                // stay a poller unless enough others are idle already
                if (polling.get() >= SPARE) {
                    return;
                }
                polling.incrementAndGet();
            }
        } finally {
            threads.decrementAndGet();
        }
    }

    private void handle(Task task) {
        Object rsp;
        try {
            rsp = handler.apply(task.request());
        } catch (Throwable e) {
            fail(task, e);
            return;
        }
        if (rsp instanceof CompletionStage) {
            ((CompletionStage<?>) rsp).whenComplete((v, e) -> {
                if (e != null) {
                    fail(task, e);
                } else {
                    answer(task, v);
                }
            });
        } else if (async && rsp == null) {
            fail(task, new NullPointerException("the async handler returned null instead of a CompletionStage"));
        } else {
            answer(task, rsp);
        }
    }

    private void answer(Task task, Object rsp) {
        if (rsp == null || rsp instanceof byte[]) {
            task.respond(0, (byte[]) rsp);
        } else {
            fail(task, new ClassCastException("resty.ffi: a response must be byte[] or null, got "
                    + rsp.getClass().getName()));
        }
    }

    private void fail(Task task, Throwable e) {
        while ((e instanceof CompletionException || e instanceof ExecutionException) && e.getCause() != null) {
            e = e.getCause();
        }
        Log.error("ffi_java: " + name + ": handler threw " + Boot.stackTrace(e));
        if (!task.answered()) {
            task.fail(1, e.toString());
        }
    }
}
