//! Compiles the loader's C++ host (`host/host.cc`: the node.h calls, and
//! the few libuv calls the handler style needs) against libnode's headers
//! into a small shared object, which the loader carries inside itself
//! (src/host.rs), and records which libnode it was built for.
//!
//! Headers are looked for in `LIBNODE_INCLUDE`, Debian's /usr/include/node
//! (libnode-dev), then the private prefix `ci/setup-nodejs.sh` unpacks
//! (`RESTY_FFI_LIBNODE_PREFIX`, default /var/cache/resty-ffi/libnode); the
//! first whose libnode is installed wins (another nodejs package may own
//! /usr/include/node for a Node with no libnode).
//!
//! libnode is NOT linked: the loader must load (and say what is missing)
//! on machines without it, and finds it at run time (src/libnode.rs). The
//! core opens runtime libraries RTLD_NOW, so the loader itself cannot hold
//! references to node's symbols: they live in the host object, which the
//! loader opens only after libnode is loaded RTLD_GLOBAL, where they
//! resolve. N-API is looked up with dlsym (src/napi.rs).
//!
//! The node.h C++ API changes with every Node major, so the build is for
//! one: NODE_MODULE_VERSION from node_version.h (108 = Node 18, Debian 12;
//! 115 = Node 20, Debian 13) names the library the loader will open,
//! `libnode.so.<version>`.

use std::path::{Path, PathBuf};

fn multiarch() -> &'static str {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("aarch64") {
        "aarch64-linux-gnu"
    } else {
        "x86_64-linux-gnu"
    }
}

/// The first header folder whose Node has its libnode here (Debian's or
/// the prefix's): /usr/include/node may belong to another nodejs package
/// (another Node major, no libnode). Without any match, the first folder
/// that has node.h.
fn include_dir() -> PathBuf {
    let prefix = std::env::var("RESTY_FFI_LIBNODE_PREFIX")
        .unwrap_or_else(|_| "/var/cache/resty-ffi/libnode".into());
    let candidates: Vec<String> = std::env::var("LIBNODE_INCLUDE")
        .ok()
        .into_iter()
        .chain([
            "/usr/include/node".to_string(),
            format!("{prefix}/usr/include/node"),
        ])
        .filter(|c| Path::new(c).join("node.h").exists())
        .collect();
    let has_lib = |v: u32| {
        let name = format!("libnode.so.{v}");
        Path::new("/usr/lib").join(multiarch()).join(&name).exists()
            || Path::new(&prefix)
                .join("usr/lib")
                .join(multiarch())
                .join(&name)
                .exists()
    };
    if let Some(c) = candidates
        .iter()
        .find(|c| has_lib(module_version(Path::new(c))))
    {
        return PathBuf::from(c);
    }
    match candidates.first() {
        Some(c) => {
            println!("cargo:warning=no libnode.so.{} next to the headers in {c}: the loader will look for it at run time", module_version(Path::new(c)));
            PathBuf::from(c)
        }
        None => panic!(
            "no libnode headers (node.h) in LIBNODE_INCLUDE, /usr/include/node or {prefix}/usr/include/node: install libnode-dev, or run ci/setup-nodejs.sh"
        ),
    }
}

fn module_version(include: &Path) -> u32 {
    let text = std::fs::read_to_string(include.join("node_version.h")).expect("node_version.h");
    text.lines()
        .find_map(|l| {
            l.strip_prefix("#define NODE_MODULE_VERSION ")
                .and_then(|v| v.trim().parse().ok())
        })
        .expect("NODE_MODULE_VERSION in node_version.h")
}

fn main() {
    let include = include_dir();
    let version = module_version(&include);
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let lib = out.join("libresty_node_host.so");
    let compiler = cc::Build::new()
        .cpp(true)
        .std("c++17")
        .opt_level(2)
        .include(&include)
        .get_compiler();
    let status = compiler
        .to_command()
        .args([
            "-shared",
            "-fPIC",
            "-fvisibility=hidden",
            "-Wall",
            "-Wextra",
        ])
        .args(["-Wno-unused-parameter", "-g0", "-Wl,-z,relro", "-o"])
        .arg(&lib)
        .arg("host/host.cc")
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C++ compiler: {e}"));
    assert!(status.success(), "compiling host/host.cc failed: {status}");
    println!("cargo:rustc-env=FFI_NODEJS_MODULE_VERSION={version}");
    println!("cargo:rustc-env=FFI_NODEJS_HOST={}", lib.display());
    println!("cargo:rerun-if-changed=host/host.cc");
    println!("cargo:rerun-if-env-changed=LIBNODE_INCLUDE");
    println!("cargo:rerun-if-env-changed=RESTY_FFI_LIBNODE_PREFIX");
}
