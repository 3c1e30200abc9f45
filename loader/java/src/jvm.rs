//! The one JVM of a worker process.
//!
//! Created lazily by the first `libffi_init` (inside the nginx worker,
//! never in the master that forks), on a thread of its own rather than the
//! worker's main thread (the JVM expects to own the stack of a thread it
//! attaches, and the primordial thread's is nginx's), then kept for the
//! life of the process: a JVM cannot be created twice in one process, so a
//! failed creation is remembered and reported to every later load.
//!
//! libjvm is found at run time and dlopened: `JAVA_HOME` (nginx passes it
//! with `env JAVA_HOME;`), then the system's default JDK (`java` on PATH or
//! /usr/bin/java), then every JDK under /usr/lib/jvm. The error names each
//! candidate and why it failed.
//!
//! Options: `-Djava.class.path=$CLASSPATH`, `-Xrs` (signals stay nginx's),
//! `-XX:+DisplayVMOutputToStderr` (the JVM's messages reach error.log),
//! `-XX:+DisableAttachMechanism -XX:-UsePerfData` (with `-Xrs` HotSpot
//! opens its attach socket at start, so any process of the worker's user
//! could `jcmd` into nginx and load agents; the perf-data file in
//! /tmp/hsperfdata_<user> tells which workers run a JVM), `-Xmx256m`
//! unless `JAVA_OPTS` sets a heap size (the JVM's default is a quarter of
//! RAM per worker), then `JAVA_OPTS` split on whitespace: they come last,
//! and HotSpot takes the last value of a flag, so
//! `-XX:-DisableAttachMechanism -XX:+UsePerfData` turns both back on.
//! Unknown options fail creation (they are not ignored).
//!
//! Then the loader's Java API (`resty.ffi.*`, compiled in by build.rs) is
//! defined in the system class loader and its natives are registered.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use jni::objects::{GlobalRef, JObject};
use jni::{InitArgsBuilder, JNIVersion, JavaVM};

use crate::{abi, natives, Error};

/// nginx's warn level.
const WARN: i32 = 5;

mod classes {
    include!(concat!(env!("OUT_DIR"), "/classes.rs"));
}
pub use classes::JAR;

/// The JVM and the class the loader calls into.
pub struct Jvm {
    pub vm: JavaVM,
    pub boot: GlobalRef,
    pub libjvm: PathBuf,
}

static JVM: OnceLock<Result<Jvm, String>> = OnceLock::new();

/// The worker's JVM, created on first use.
pub fn get() -> Result<&'static Jvm, Error> {
    JVM.get_or_init(create)
        .as_ref()
        .map_err(|e| Error::Jvm(e.clone()))
}

/// Candidate libjvm paths in the order they are tried, with where each
/// came from.
fn candidates() -> Vec<(String, PathBuf)> {
    let java = std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("java"))
                .find(|j| j.exists())
        })
        .unwrap_or_else(|| PathBuf::from("/usr/bin/java"));
    candidates_from(
        std::env::var_os("JAVA_HOME"),
        &java,
        Path::new("/usr/lib/jvm"),
    )
}

/// [`candidates`] for a given JAVA_HOME, `java` launcher and JDK folder;
/// each libjvm is listed once (symlinks resolved).
fn candidates_from(
    java_home: Option<std::ffi::OsString>,
    java: &Path,
    jvm_dir: &Path,
) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let lib = |home: &Path| home.join("lib/server/libjvm.so");
    if let Some(home) = java_home.filter(|h| !h.is_empty()) {
        out.push(("JAVA_HOME".to_string(), lib(Path::new(&home))));
    }
    if let Ok(real) = std::fs::canonicalize(java) {
        // <home>/bin/java
        if let Some(home) = real.parent().and_then(Path::parent) {
            out.push((format!("default JDK ({})", java.display()), lib(home)));
        }
    }
    let mut homes: Vec<PathBuf> = std::fs::read_dir(jvm_dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    homes.sort();
    for h in homes {
        out.push((jvm_dir.display().to_string(), lib(&h)));
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|(_, p)| seen.insert(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())));
    out
}

/// dlopens the first libjvm that loads; the library stays loaded forever.
fn open_libjvm() -> Result<PathBuf, String> {
    open_first(candidates())
}

fn open_first(candidates: Vec<(String, PathBuf)>) -> Result<PathBuf, String> {
    let mut tried = Vec::new();
    for (from, path) in candidates {
        if !path.exists() {
            tried.push(format!("{} ({from}): no such file", path.display()));
            continue;
        }
        // SAFETY: loading libjvm runs only its initialisers, which have no
        // preconditions; it is never unloaded (forgotten below).
        match unsafe { libloading::Library::new(&path) } {
            Ok(l) => {
                std::mem::forget(l);
                return Ok(path);
            }
            Err(e) => tried.push(format!("{} ({from}): {e}", path.display())),
        }
    }
    if tried.is_empty() {
        tried.push("no JAVA_HOME, no java on PATH, nothing under /usr/lib/jvm".into());
    }
    Err(format!(
        "no usable libjvm.so; tried: {}. Install a JDK (ci/setup-java.sh) or pass JAVA_HOME with `env JAVA_HOME=/path/to/jdk;` in nginx.conf",
        tried.join("; ")
    ))
}

/// The JVM options: see the module doc.
pub fn options(classpath: Option<&str>, java_opts: Option<&str>) -> Vec<String> {
    let user: Vec<String> = java_opts
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let mut opts = Vec::new();
    if let Some(cp) = classpath.filter(|c| !c.is_empty()) {
        opts.push(format!("-Djava.class.path={cp}"));
    }
    opts.push("-Xrs".to_string());
    // the JVM's own messages (warnings, -Xcheck:jni, crash notes) go to its
    // "tty", stdout by default, which is /dev/null in an nginx worker
    opts.push("-XX:+DisplayVMOutputToStderr".to_string());
    // no attach listener (jcmd, agents) and no perf-data file; JAVA_OPTS,
    // which come last, may turn them back on
    opts.push("-XX:+DisableAttachMechanism".to_string());
    opts.push("-XX:-UsePerfData".to_string());
    let sets_heap = user.iter().any(|o| {
        o.starts_with("-Xmx")
            || o.starts_with("-XX:MaxHeapSize")
            || o.starts_with("-XX:MaxRAMPercentage")
            || o.starts_with("-XX:MaxRAM=")
    });
    if !sets_heap {
        opts.push("-Xmx256m".to_string());
    }
    opts.extend(user);
    opts
}

fn create() -> Result<Jvm, String> {
    abi::make_core_global()?;
    // off the worker's main thread; see the module doc
    std::thread::Builder::new()
        .name("java-create".into())
        .stack_size(8 << 20)
        .spawn(create_here)
        .map_err(|e| format!("cannot start a thread: {e}"))?
        .join()
        .map_err(|p| format!("panic: {}", abi::panic_text(&*p)))?
}

fn create_here() -> Result<Jvm, String> {
    let libjvm = open_libjvm()?;
    let classpath = std::env::var("CLASSPATH").ok();
    let java_opts = std::env::var("JAVA_OPTS").ok();
    let opts = options(classpath.as_deref(), java_opts.as_deref());
    let mut args = InitArgsBuilder::new()
        .version(JNIVersion::V8)
        .ignore_unrecognized(false);
    for o in &opts {
        args = args.option(o.as_str());
    }
    let args = args
        .build()
        .map_err(|e| format!("bad JVM option: {e} (options: {})", opts.join(" ")))?;
    let vm = JavaVM::with_libjvm(args, || Ok(libjvm.clone())).map_err(|e| {
        format!(
            "{} could not create a JVM: {e}; options: {} (check JAVA_OPTS; the JVM's own message is in error.log)",
            libjvm.display(),
            opts.join(" ")
        )
    })?;
    let boot = define_api(&vm)
        .map_err(|e| format!("setting up resty.ffi in {}: {e}", libjvm.display()))?;
    Ok(Jvm { vm, boot, libjvm })
}

/// Defines `resty.ffi.*` in the system class loader, registers the
/// natives, and runs `Boot.setup()`; returns the Boot class.
fn define_api(vm: &JavaVM) -> Result<GlobalRef, Error> {
    let mut env = vm.attach_current_thread()?;
    // (JVMTI's GetEnv wants an attached thread)
    if let Err(e) = crate::jvmti::watch(vm) {
        // stages lost to a full heap are then noticed only when the
        // loader's own code meets the error
        abi::log(
            WARN,
            &format!("ffi_java: cannot count OutOfMemoryErrors through JVMTI: {e}"),
        );
    }
    let loader = env
        .call_static_method(
            "java/lang/ClassLoader",
            "getSystemClassLoader",
            "()Ljava/lang/ClassLoader;",
            &[],
        )?
        .l()?;
    // A class's supertypes must be defined before it (the system class
    // loader cannot find ours): define in passes, each retrying what
    // failed for want of a class defined later in the list.
    let mut left: Vec<&(&str, &[u8])> = classes::CLASSES.iter().collect();
    while !left.is_empty() {
        let mut failed = Vec::new();
        for c in &left {
            if env.define_class(c.0, &loader, c.1).is_err() {
                let _ = env.exception_clear();
                failed.push(*c);
            }
        }
        if failed.len() == left.len() {
            let (name, bytes) = failed[0];
            let e = match env.define_class(*name, &loader, bytes) {
                Err(e) => e,
                Ok(_) => continue,
            };
            return Err(describe(&mut env, e, &format!("defining {name}")));
        }
        left = failed;
    }
    let native = env.find_class("resty/ffi/Native")?;
    env.register_native_methods(&native, &natives::table())?;
    let boot = env.find_class("resty/ffi/Boot")?;
    if let Err(e) = env.call_static_method(&boot, "setup", "()V", &[]) {
        return Err(describe(&mut env, e, "resty.ffi.Boot.setup()"));
    }
    let boot = env.new_global_ref(JObject::from(boot))?;
    Ok(boot)
}

/// Turns a JNI error (a pending Java exception included) into an Error.
pub fn describe(env: &mut jni::JNIEnv<'_>, e: jni::errors::Error, what: &str) -> Error {
    if env.exception_check().unwrap_or(false) {
        let ex = env.exception_occurred();
        let _ = env.exception_clear();
        if let Ok(ex) = ex {
            let text = env
                .call_method(&ex, "toString", "()Ljava/lang/String;", &[])
                .and_then(|v| v.l())
                .and_then(|s| env.get_string(&s.into()).map(String::from));
            if let Ok(text) = text {
                return Error::Internal(format!("{what}: {text}"));
            }
        }
    }
    Error::Internal(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::{candidates_from, open_first, options};

    fn fake_jdk(root: &Path, name: &str, libjvm: &[u8]) -> PathBuf {
        let home = root.join(name);
        std::fs::create_dir_all(home.join("lib/server")).unwrap();
        std::fs::create_dir_all(home.join("bin")).unwrap();
        std::fs::write(home.join("lib/server/libjvm.so"), libjvm).unwrap();
        std::fs::write(home.join("bin/java"), b"").unwrap();
        home
    }

    #[test]
    fn libjvm_candidates_come_in_order_once_each_and_failures_are_named() {
        let root = std::env::temp_dir().join(format!("ffi-java-test-{}", std::process::id()));
        let jvm = root.join("jvm");
        let a = fake_jdk(&jvm, "a-jdk", b"not an ELF file");
        let b = fake_jdk(&jvm, "b-jdk", b"");
        let c = candidates_from(Some("/nonexistent/jdk".into()), &b.join("bin/java"), &jvm);
        assert_eq!(
            c,
            vec![
                (
                    "JAVA_HOME".to_string(),
                    PathBuf::from("/nonexistent/jdk/lib/server/libjvm.so")
                ),
                (
                    format!("default JDK ({})", b.join("bin/java").display()),
                    std::fs::canonicalize(&b)
                        .unwrap()
                        .join("lib/server/libjvm.so")
                ),
                (jvm.display().to_string(), a.join("lib/server/libjvm.so")),
            ]
        );
        let err = open_first(c).unwrap_err();
        assert!(
            err.contains("/nonexistent/jdk/lib/server/libjvm.so (JAVA_HOME): no such file"),
            "{err}"
        );
        assert!(err.contains("a-jdk/lib/server/libjvm.so ("), "{err}");
        assert!(err.contains("env JAVA_HOME="), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
        assert!(open_first(vec![]).unwrap_err().contains("no JAVA_HOME"));
    }

    #[test]
    fn default_heap_unless_java_opts_sets_one() {
        let o = options(Some("/a.jar:/b"), None);
        let (vm, att, perf) = (
            "-XX:+DisplayVMOutputToStderr",
            "-XX:+DisableAttachMechanism",
            "-XX:-UsePerfData",
        );
        assert_eq!(
            o,
            [
                "-Djava.class.path=/a.jar:/b",
                "-Xrs",
                vm,
                att,
                perf,
                "-Xmx256m"
            ]
        );
        let o = options(None, Some("  -Xmx1g   -Dx=1 "));
        assert_eq!(o, ["-Xrs", vm, att, perf, "-Xmx1g", "-Dx=1"]);
        let o = options(Some(""), Some("-XX:MaxRAMPercentage=10"));
        assert_eq!(o, ["-Xrs", vm, att, perf, "-XX:MaxRAMPercentage=10"]);
        // JAVA_OPTS come after our defaults: the last value of a flag wins
        let o = options(None, Some("-XX:-DisableAttachMechanism -XX:+UsePerfData"));
        assert_eq!(o.last().map(String::as_str), Some("-XX:+UsePerfData"));
    }
}
