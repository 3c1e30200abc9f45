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
 * declared type. When the call is given up (its Lua timeout, its client
 * gone) the stage is cancelled within about 50 ms (see Stages): the
 * handler's code sees isCancelled(), a whenComplete a
 * CancellationException, and the task is answered to nobody, nothing
 * logged. A sync handler running on a thread is not interrupted.
 *
 * -Dresty.ffi.executor=virtual (JDK 21+) hands each sync call from the
 * poller to a new virtual thread instead: no thread bound for handlers that
 * block, at the price of a hand-over per call (waking a parked carrier
 * thread). On an older JDK the setting is reported and ignored.
 *
 * Streaming: a handler (or its stage) may answer with an Iterator<byte[]>,
 * a Stream<byte[]> or a Flow.Publisher<byte[]>, each element one chunk (see
 * Streams). An Iterator or Stream a handler returns is pulled on the
 * thread that ran the handler (the poller, or its virtual thread), which
 * waits there while the reader is a window behind; as with a sync handler
 * that blocks, another thread polls meanwhile. One that a stage completes
 * with is pulled on a stream thread (js<N>-<Class>, a cached pool; a
 * virtual thread with -Dresty.ffi.executor=virtual), never on the thread
 * that completed the stage. A Publisher is subscribed where it is returned
 * and holds no thread (see PushStream).
 *
 * Errors: an exception (or a failed stage) answers rc 1 with
 * "ExceptionClass: message" (Throwable.toString()) and logs the stack
 * trace; the runtime keeps serving. The queue finishing (rt:__unload())
 * ends every poller once the calls already queued are served; answers of
 * stages still running arrive later and are delivered as usual.
 *
 * Out of memory: every step between taking a task and handing it to the
 * handler, and every answer, catches Throwable, and the answer of last
 * resort needs no heap (Task.fail(rc, Throwable)): the call that hit an
 * OutOfMemoryError gets `false, 1, "java.lang.OutOfMemoryError: ..."`,
 * later calls are served or get the same error at once (a poller that
 * cannot even wrap a task answers it natively, see Queue), and a poller
 * thread never dies of it: whatever escapes an iteration is logged if
 * memory allows and the same thread polls again. A stage whose own thread
 * dies of it never completes: Stages answers those.
 */
package resty.ffi;

import java.util.concurrent.CancellationException;
import java.util.concurrent.CompletionException;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Executor;
import java.util.concurrent.Executors;
import java.util.concurrent.Flow;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.locks.LockSupport;
import java.util.function.Function;

final class Serve {
    static final int MAX_THREADS = Integer.getInteger("resty.ffi.threads", 256);
    static final int SPARE = 2;
    static final Executor VIRTUAL = virtualExecutor();
    /**
     * Nothing escapes a poller's loop; what reaches this is thrown while a
     * poller thread ends (Thread's own teardown can need heap), when the
     * heap is full: logged if memory allows, never the JVM's default
     * handler, which fails again printing it.
     */
    static final Thread.UncaughtExceptionHandler ENDED = (t, e) -> {
        try {
            Log.error("ffi_java: poller " + t.getName() + " ended with " + Boot.stackTrace(e));
        } catch (Throwable noRoom) {
            // the thread ended anyway; no task was lost
        }
    };

    private final Function<byte[], Object> handler;
    private final boolean async;
    private final Queue queue;
    private final String name;
    private final ClassLoader loader;
    private final AtomicInteger polling = new AtomicInteger();
    private final AtomicInteger threads = new AtomicInteger();
    private final AtomicInteger nextId = new AtomicInteger();
    /** Logged when there is no memory for a stack trace. */
    private final String noRoomLine;
    /** The stages this runtime waits on, watched for being lost to a full heap. */
    private final Stages stages = Stages.create();
    /** Where streams of this queue wait for room without blocking. */
    private final Window window;
    /** Pulls the streams stages complete with (created on first use). */
    private volatile Executor streamThreads;

    private Serve(Function<byte[], Object> handler, boolean async, Queue queue, String name, ClassLoader loader) {
        this.handler = handler;
        this.async = async;
        this.queue = queue;
        this.name = name;
        this.loader = loader;
        this.noRoomLine = "ffi_java: " + name + ": a handler or poller failed and no memory is left to describe it:";
        this.window = new Window(queue.address(), name);
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

    /** Starts one more poller unless at the bound; true if started. Never throws. */
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
        try {
            int id = nextId.getAndIncrement();
            Thread t = new Thread(() -> run(id), "jv" + id + "-" + name);
            t.setDaemon(true);
            t.setUncaughtExceptionHandler(ENDED);
            t.setContextClassLoader(loader);
            t.start();
            return true;
        } catch (Throwable e) {
            polling.decrementAndGet();
            threads.decrementAndGet();
            logQuietly(e, "cannot start a poller: ");
            return false;
        }
    }

    private void run(int id) {
        try {
            Native.nameThread(("jv" + id + "-" + name));
        } catch (Throwable e) {
            // no memory for the name: the JVM's name stays
        }
        // polling was counted for us before we got here
        boolean counted = true;
        try {
            while (true) {
                try {
                    if (!counted) {
                        polling.incrementAndGet();
                        counted = true;
                    }
                    Task task = queue.poll();
                    counted = false;
                    int left = polling.decrementAndGet();
                    if (task == null) {
                        stages.finish();
                        return;
                    }
                    if (left == 0) {
                        spawn();
                    }
                    dispatch(task);
                    // stay a poller unless enough others are idle already
                    if (polling.get() >= SPARE) {
                        return;
                    }
                } catch (Throwable e) {
                    // not a task's: dispatch answers those. Poll again.
                    logQuietly(e, "poller: ");
                    LockSupport.parkNanos(1_000_000);
                }
            }
        } finally {
            threads.decrementAndGet();
        }
    }

    /** Runs the handler for task here or on a virtual thread. Never throws. */
    private void dispatch(Task task) {
        try {
            if (VIRTUAL != null && !async) {
                VIRTUAL.execute(() -> handle(task, true));
            } else {
                handle(task, false);
            }
        } catch (Throwable e) {
            fail(task, e);
        }
    }

    /**
     * Calls the handler and answers task, now or when its stage completes
     * (virtual: this is a virtual thread). Never throws.
     */
    private void handle(Task task, boolean virtual) {
        try {
            Object rsp = handler.apply(task.request());
            if (rsp instanceof CompletionStage) {
                CompletionStage<?> stage = (CompletionStage<?>) rsp;
                stages.add(task, stage);
                stage.whenComplete((v, e) -> complete(task, v, e));
            } else if (async && rsp == null) {
                fail(task, new NullPointerException("the async handler returned null instead of a CompletionStage"));
            } else {
                answer(task, rsp, true, virtual);
            }
        } catch (Throwable e) {
            fail(task, e);
        }
    }

    private void complete(Task task, Object v, Throwable e) {
        stages.remove(task);
        if (e != null && givenUp(task, e)) {
            try {
                if (!task.answered()) {
                    task.respond(0, null); // nobody reads it: the core frees it
                }
            } catch (Throwable t) {
                // answered by Stages meanwhile
            }
        } else if (e != null) {
            fail(task, e);
        } else {
            answer(task, v, false, false);
        }
    }

    /** Whether e is the cancellation Stages made because nobody waits for task any more. */
    private static boolean givenUp(Task task, Throwable e) {
        if (e instanceof CompletionException && e.getCause() != null) {
            e = e.getCause();
        }
        return e instanceof CancellationException && task.cancelled();
    }

    /**
     * Answers task with rsp, or streams it (here: pull an Iterator or
     * Stream on this thread, a virtual one if virtual). Never throws; a
     * task answered already is left alone.
     */
    private void answer(Task task, Object rsp, boolean here, boolean virtual) {
        try {
            if (rsp == null || rsp instanceof byte[]) {
                if (!task.answered()) {
                    task.respond(0, (byte[]) rsp);
                }
            } else if (rsp instanceof Flow.Publisher) {
                new PushStream(task, this, window).start((Flow.Publisher<?>) rsp);
            } else if (Streams.isStream(rsp)) {
                if (here) {
                    new PullStream(task, rsp, this, virtual ? window : null).run();
                } else {
                    PullStream p = new PullStream(task, rsp, this, VIRTUAL != null ? window : null);
                    streamThreads().execute(p::run);
                }
            } else {
                fail(task, new ClassCastException("resty.ffi: a response must be byte[], null, an Iterator<byte[]>,"
                        + " a Stream<byte[]> or a Flow.Publisher<byte[]>, got " + rsp.getClass().getName()));
            }
        } catch (Throwable t) {
            if (!task.answered()) {
                fail(task, t);
            }
            // else: answered meanwhile (Stages gave up on the stage)
        }
    }

    /** The executor pulling streams that stages complete with. */
    private Executor streamThreads() {
        Executor e = streamThreads;
        if (e != null) {
            return e;
        }
        synchronized (this) {
            if (streamThreads == null) {
                if (VIRTUAL != null) {
                    streamThreads = VIRTUAL;
                } else {
                    AtomicInteger ids = new AtomicInteger();
                    streamThreads = Executors.newCachedThreadPool(r -> {
                        String n = "js" + ids.getAndIncrement() + "-" + name;
                        Thread t = new Thread(() -> {
                            try {
                                Native.nameThread(n);
                            } catch (Throwable noRoom) {
                                // keeps the JVM's name
                            }
                            r.run();
                        }, n);
                        t.setDaemon(true);
                        t.setUncaughtExceptionHandler(ENDED);
                        t.setContextClassLoader(loader);
                        return t;
                    });
                }
            }
            return streamThreads;
        }
    }

    /** A stream ended: rc 0 (nil), or rc 1 with error. Never throws. */
    void end(Task task, Throwable error) {
        if (error != null) {
            fail(task, error);
            return;
        }
        try {
            if (!task.answered()) {
                task.respond(0, null);
            }
        } catch (Throwable t) {
            // answered by another thread meanwhile
        }
    }

    /** Answers task with e (rc 1) and logs its stack trace. Never throws. */
    private void fail(Task task, Throwable e) {
        try {
            while ((e instanceof CompletionException || e instanceof ExecutionException) && e.getCause() != null) {
                e = e.getCause();
            }
        } catch (Throwable t) {
            // keep e as it is
        }
        if (e instanceof OutOfMemoryError) {
            Stages.sawOutOfMemory();
        }
        // answer first: logging needs memory that may not be there
        try {
            if (!task.answered()) {
                task.fail(1, e);
            }
        } catch (Throwable t) {
            // answered by another thread meanwhile
        }
        logQuietly(e, "handler threw ");
    }

    /** Logs "ffi_java: name: what" and e's stack trace, as far as memory allows. Never throws. */
    void logQuietly(Throwable e, String what) {
        try {
            Log.error("ffi_java: " + name + ": " + what + Boot.stackTrace(e));
            return;
        } catch (Throwable t) {
            // no room for the trace
        }
        try {
            Log.error(noRoomLine);
            String type = e instanceof OutOfMemoryError ? Task.OOM_NAME : Task.ERROR_NAME;
            try {
                type = e.getClass().getName();
            } catch (Throwable t) {
                // the fallback above
            }
            Log.error(type);
        } catch (Throwable t) {
            // nothing left to say it with
        }
    }
}
