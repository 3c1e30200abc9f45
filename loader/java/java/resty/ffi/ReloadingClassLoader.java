/*
 * The class loader behind '?' in a cfg: a fresh loader over CLASSPATH that
 * loads the named class's package itself (child first), so after
 * rt:__unload() a load_ffi with '?' picks up changed class files. Other
 * classes (the JDK, resty.ffi, libraries) come from the system class loader
 * as usual.
 */
package resty.ffi;

import java.io.File;
import java.net.MalformedURLException;
import java.net.URL;
import java.net.URLClassLoader;
import java.util.ArrayList;
import java.util.List;

final class ReloadingClassLoader extends URLClassLoader {
    static {
        registerAsParallelCapable();
    }

    private final String prefix;

    private ReloadingClassLoader(URL[] urls, ClassLoader parent, String prefix) {
        super(urls, parent);
        this.prefix = prefix;
    }

    static ReloadingClassLoader forClass(String className, ClassLoader parent) throws MalformedURLException {
        List<URL> urls = new ArrayList<>();
        String cp = System.getProperty("java.class.path", "");
        for (String p : cp.split(File.pathSeparator)) {
            if (!p.isEmpty()) {
                urls.add(new File(p).toURI().toURL());
            }
        }
        int dot = className.lastIndexOf('.');
        String prefix = dot < 0 ? "" : className.substring(0, dot + 1);
        return new ReloadingClassLoader(urls.toArray(new URL[0]), parent, prefix);
    }

    private boolean ours(String name) {
        if (name.startsWith("resty.ffi.") || name.startsWith("java.") || name.startsWith("javax.")
                || name.startsWith("jdk.") || name.startsWith("sun.")) {
            return false;
        }
        return name.startsWith(prefix);
    }

    @Override
    protected Class<?> loadClass(String name, boolean resolve) throws ClassNotFoundException {
        if (!ours(name)) {
            return super.loadClass(name, resolve);
        }
        synchronized (getClassLoadingLock(name)) {
            Class<?> c = findLoadedClass(name);
            if (c == null) {
                try {
                    c = findClass(name);
                } catch (ClassNotFoundException e) {
                    return super.loadClass(name, resolve);
                }
            }
            if (resolve) {
                resolveClass(c);
            }
            return c;
        }
    }
}
