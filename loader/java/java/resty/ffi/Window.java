/*
 * Waiting for room in a stream's window without blocking in the core, for
 * the producers that must not: a Publisher's subscriber (its onNext runs on
 * the publisher's thread, which other work shares) and an Iterator pulled
 * on a virtual thread (a native call that blocks pins the carrier, and a
 * JVM has as many carriers as CPUs).
 *
 * Such a producer offers each chunk with Task.offer(data, false); told 2
 * (the window is full, the chunk was not taken) it calls await(this), then
 * offers the same chunk once more (room may have come in between), and
 * only if that is refused too it waits: its spaceMaybe() is called once the
 * queue's space fd says a stream of the queue made room or was cancelled,
 * or RECHECK_MS later anyway, and it offers again. The core marks the
 * producer waiting before it answers 2 and signals the fd when the reader
 * reads past the mark, so no wake-up is lost; readiness covers every
 * stream of the queue and may be spurious.
 *
 * One platform thread per queue (jw-<Class>) waits on the fd: started on
 * the first await, it ends after IDLE_NS without waiters. It calls
 * spaceMaybe() of each waiter in turn, so those must not block (a
 * PushStream drains what it holds without blocking; a PullStream unparks
 * its thread). If no thread can be started (out of memory), waiters still
 * look again every RECHECK_MS on their own.
 */
package resty.ffi;

import java.util.Iterator;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicBoolean;

final class Window {
    static final int RECHECK_MS = 100;
    private static final long IDLE_NS = 2_000_000_000L;

    /** A producer waiting for room. */
    interface Waiter {
        /** Room may have come: offer again. Must not block. */
        void spaceMaybe();
    }

    private final long tq;
    private final String name;
    private final Set<Waiter> waiters = ConcurrentHashMap.newKeySet();
    private final AtomicBoolean running = new AtomicBoolean();

    Window(long tq, String name) {
        this.tq = tq;
        this.name = name;
    }

    /** w waits for room: its spaceMaybe() is called once (after which it awaits again if it must). */
    void await(Waiter w) {
        waiters.add(w);
        if (!running.get() && running.compareAndSet(false, true)) {
            try {
                Thread t = new Thread(this::run, "jw-" + name);
                t.setDaemon(true);
                t.start();
            } catch (Throwable e) {
                running.set(false);
            }
        }
    }

    private void run() {
        try {
            Native.nameThread("jw-" + name);
        } catch (Throwable e) {
            // keeps the JVM's name
        }
        long idleSince = System.nanoTime();
        while (true) {
            try {
                Native.awaitSpace(tq, RECHECK_MS);
                if (waiters.isEmpty()) {
                    if (System.nanoTime() - idleSince > IDLE_NS) {
                        running.set(false);
                        // a waiter that came meanwhile found us running: serve it
                        if (waiters.isEmpty() || !running.compareAndSet(false, true)) {
                            return;
                        }
                    }
                    continue;
                }
                idleSince = System.nanoTime();
                for (Iterator<Waiter> i = waiters.iterator(); i.hasNext(); ) {
                    Waiter w = i.next();
                    i.remove();
                    w.spaceMaybe();
                }
            } catch (Throwable e) {
                // out of memory for the iterator, or a waiter threw: next round
            }
        }
    }
}
