//! Compiles the loader's small Java API (`java/resty/ffi/*.java`, plain JDK)
//! with javac, packs it into `resty-ffi.jar` (copied next to
//! libffi_java.so, for runtimes that compile against it), and writes
//! `classes.rs`: every class file as bytes, which
//! the loader defines in the JVM it creates, so no jar of ours has to be on
//! a worker's CLASSPATH.
//!
//! Needs a JDK's `javac` and `jar` (JAVA_HOME/bin first, then PATH);
//! `ci/setup-java.sh` installs one. Compiled for Java 17, so the classes
//! run on JDK 17 and later.

use std::path::{Path, PathBuf};
use std::process::Command;

fn tool(name: &str) -> PathBuf {
    if let Some(home) = std::env::var_os("JAVA_HOME") {
        let p = Path::new(&home).join("bin").join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (install a JDK: ci/setup-java.sh)"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

fn main() {
    let src = Path::new("java/resty/ffi");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let classes = out.join("classes");
    let _ = std::fs::remove_dir_all(&classes);
    std::fs::create_dir_all(&classes).expect("classes dir");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(src)
        .expect("java/resty/ffi")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "java"))
        .collect();
    sources.sort();
    run(Command::new(tool("javac"))
        .args(["--release", "17", "-Xlint:all", "-Werror", "-d"])
        .arg(&classes)
        .args(&sources));
    run(Command::new(tool("jar"))
        .arg("cf")
        .arg(out.join("resty-ffi.jar"))
        .arg("-C")
        .arg(&classes)
        .arg("."));

    let mut files: Vec<PathBuf> = std::fs::read_dir(classes.join("resty/ffi"))
        .expect("compiled classes")
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    let mut rs = String::from("/// The loader's Java API, compiled: (binary name, class file).\n");
    rs.push_str("pub const CLASSES: &[(&str, &[u8])] = &[\n");
    for f in &files {
        let stem = f.file_stem().expect("name").to_string_lossy();
        rs.push_str(&format!(
            "    (\"resty/ffi/{stem}\", include_bytes!({:?})),\n",
            f.display().to_string()
        ));
    }
    rs.push_str("];\n");
    rs.push_str(&format!(
        "/// Where the build left resty-ffi.jar.\npub const JAR: &str = {:?};\n",
        out.join("resty-ffi.jar").display().to_string()
    ));
    std::fs::write(out.join("classes.rs"), rs).expect("classes.rs");
    // Also next to libffi_java.so (target/<profile>/), where users look for
    // what to compile against; OUT_DIR is target/<profile>/build/<pkg>/out.
    if let Some(profile_dir) = out.ancestors().nth(3) {
        let _ = std::fs::copy(out.join("resty-ffi.jar"), profile_dir.join("resty-ffi.jar"));
    }
    println!("cargo:rerun-if-changed=java");
    println!("cargo:rerun-if-env-changed=JAVA_HOME");
}
