/*
 * What libffi_init does inside the JVM for one cfg "pkg.Class[?],method[,rest]":
 * load the class (with '?', through a fresh ReloadingClassLoader so a changed
 * class is picked up), find the method, and start it in the style its
 * signature says:
 *
 *   public static int method(String cfg, long tq)            compat style
 *   public static Function<byte[], byte[]> method(String cfg)  handler style
 *   public static Function<byte[], CompletionStage<byte[]>> method(String cfg)
 *
 * start() never throws: it returns null when the runtime runs, else
 * "kind\tmessage", which the loader turns into its error (and load_ffi's).
 */
package resty.ffi;

import java.io.PrintStream;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.lang.reflect.ParameterizedType;
import java.lang.reflect.Type;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletionStage;
import java.util.function.Function;

final class Boot {
    private Boot() {}

    /** Called once, when the loader has created the JVM. */
    static void setup() {
        System.setOut(new PrintStream(new LineStream(Log.NOTICE), true));
        System.setErr(new PrintStream(new LineStream(Log.ERROR), true));
        // initialised now, while there is memory: a class whose initialiser
        // fails for want of heap stays unusable for good
        for (Class<?> c : new Class<?>[] {Task.class, Queue.class, Serve.class, Stages.class, Log.class, Native.class,
                Streams.class, Window.class, PullStream.class, PushStream.class}) {
            try {
                Class.forName(c.getName(), true, c.getClassLoader());
            } catch (ClassNotFoundException e) {
                throw new IllegalStateException(e);
            }
        }
    }

    static String stackTrace(Throwable t) {
        StringWriter w = new StringWriter();
        t.printStackTrace(new PrintWriter(w));
        return w.toString().stripTrailing();
    }

    static String start(String className, boolean reload, String methodName, String rest, long tq) {
        Class<?> cls;
        try {
            ClassLoader system = ClassLoader.getSystemClassLoader();
            if (reload) {
                cls = ReloadingClassLoader.forClass(className, system).loadClass(className);
            } else {
                cls = Class.forName(className, true, system);
            }
        } catch (ClassNotFoundException e) {
            return "class\tclass " + className + " not found (CLASSPATH: "
                    + System.getProperty("java.class.path") + ")";
        } catch (Throwable e) {
            Log.error("ffi_java: loading " + className + ": " + stackTrace(e));
            return "class\tcannot load class " + className + ": " + e;
        }
        List<Method> named = new ArrayList<>();
        for (Method m : cls.getDeclaredMethods()) {
            if (m.getName().equals(methodName)) {
                named.add(m);
            }
        }
        if (named.isEmpty()) {
            return "method\t" + className + " has no method '" + methodName + "'";
        }
        Method compat = null, handler = null;
        for (Method m : named) {
            if (!Modifier.isStatic(m.getModifiers())) {
                continue;
            }
            Class<?>[] p = m.getParameterTypes();
            if (p.length == 2 && p[0] == String.class && p[1] == long.class && m.getReturnType() == int.class) {
                compat = m;
            } else if (p.length == 1 && p[0] == String.class && Function.class.isAssignableFrom(m.getReturnType())) {
                handler = m;
            }
        }
        if (compat == null && handler == null) {
            StringBuilder found = new StringBuilder();
            for (Method m : named) {
                found.append(found.length() == 0 ? "" : "; ").append(m.toGenericString());
            }
            return "signature\t" + className + "." + methodName + " has the wrong signature (found: " + found
                    + "); want public static int " + methodName + "(String cfg, long tq)"
                    + " or public static Function<byte[], byte[]> " + methodName + "(String cfg)"
                    + " or Function<byte[], CompletionStage<byte[]>>";
        }
        Method m = compat != null ? compat : handler;
        String what = className + "." + methodName + (compat != null ? "(cfg, tq)" : "(cfg)");
        try {
            m.setAccessible(true);
        } catch (RuntimeException e) {
            return "signature\t" + what + " is not accessible: " + e;
        }
        Object ret;
        ClassLoader saved = Thread.currentThread().getContextClassLoader();
        Thread.currentThread().setContextClassLoader(cls.getClassLoader());
        try {
            ret = compat != null ? m.invoke(null, rest, tq) : m.invoke(null, rest);
        } catch (InvocationTargetException e) {
            Throwable t = e.getCause();
            Log.error("ffi_java: " + what + " threw " + stackTrace(t));
            return "threw\t" + what + " threw " + t;
        } catch (Throwable t) {
            return "threw\t" + what + ": " + t;
        } finally {
            Thread.currentThread().setContextClassLoader(saved);
        }
        if (compat != null) {
            int rc = (Integer) ret;
            return rc == 0 ? null : "returned\t" + rc + "\t" + what + " returned " + rc;
        }
        if (ret == null) {
            return "badreturn\t" + what + " returned null: return the handler, a Function<byte[], byte[]>";
        }
        boolean async = isAsync(m.getGenericReturnType());
        @SuppressWarnings("unchecked")
        Function<byte[], Object> f = (Function<byte[], Object>) ret;
        try {
            Serve.start(f, async, Queue.of(tq), cls.getSimpleName(), cls.getClassLoader());
        } catch (Throwable t) {
            Log.error("ffi_java: starting the handler of " + what + ": " + stackTrace(t));
            return "serve\t" + what + ": " + t;
        }
        return null;
    }

    /** Function<byte[], X> where X is a CompletionStage (or a subtype). */
    static boolean isAsync(Type t) {
        if (t instanceof ParameterizedType) {
            Type[] args = ((ParameterizedType) t).getActualTypeArguments();
            if (args.length == 2) {
                Type r = args[1];
                Type raw = r instanceof ParameterizedType ? ((ParameterizedType) r).getRawType() : r;
                return raw instanceof Class && CompletionStage.class.isAssignableFrom((Class<?>) raw);
            }
        }
        return false;
    }
}
