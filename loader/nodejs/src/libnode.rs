//! Finding and opening libnode at run time.
//!
//! The loader is built against one Node major (build.rs records its
//! NODE_MODULE_VERSION: 108 = Node 18, Debian 12's libnode108; 115 = Node
//! 20, Debian 13's libnode115) and opens `libnode.so.<version>` from, in
//! order:
//! 1. `RESTY_FFI_LIBNODE`, a path to the library (nginx passes it with
//!    `env RESTY_FFI_LIBNODE=/path/libnode.so.108;`): when set, only it;
//! 2. Debian's place, /usr/lib/<multiarch>/ (`apt install libnode108`);
//! 3. the private prefix ci/setup-nodejs.sh unpacks where Debian's package
//!    cannot be installed (`RESTY_FFI_LIBNODE_PREFIX`, default
//!    /var/cache/resty-ffi/libnode).
//!
//! It is opened RTLD_GLOBAL (native `.node` addons and the loader's own
//! host code find node's, V8's and libuv's symbols in the global scope) and
//! never closed. Debian's libnode also loads a few of Node's own modules
//! from Debian packages (node-acorn, node-cjs-module-lexer, node-undici)
//! and aborts the process without them, so they are checked first.

use std::ffi::{c_void, CString};
use std::path::{Path, PathBuf};

use resty_ffi_loader::dlerror;

/// NODE_MODULE_VERSION of the headers the loader was built with.
pub const MODULE_VERSION: &str = env!("FFI_NODEJS_MODULE_VERSION");

/// The library's file name (ci/package.sh reads it from the built loader
/// to name the package it recommends).
pub const SONAME: &str = concat!("libnode.so.", env!("FFI_NODEJS_MODULE_VERSION"));

/// The Debian package that ships the library for this build.
pub fn package() -> String {
    format!("libnode{MODULE_VERSION}")
}

/// Files Debian's libnode reads at start (from /usr/share/nodejs), with
/// the package that has each.
const SHARED_BUILTINS: &[(&str, &str)] = &[
    ("/usr/share/nodejs/acorn/dist/acorn.js", "node-acorn"),
    ("/usr/share/nodejs/acorn-walk/dist/walk.js", "node-acorn"),
    (
        "/usr/share/nodejs/cjs-module-lexer/lexer.js",
        "node-cjs-module-lexer",
    ),
    ("/usr/share/nodejs/undici/undici-fetch.js", "node-undici"),
];

fn multiarch() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "aarch64-linux-gnu"
    } else {
        "x86_64-linux-gnu"
    }
}

/// Candidate paths with where each came from, in the order tried.
pub fn candidates() -> Vec<(String, PathBuf)> {
    candidates_from(
        std::env::var_os("RESTY_FFI_LIBNODE"),
        std::env::var_os("RESTY_FFI_LIBNODE_PREFIX"),
    )
}

fn candidates_from(
    over: Option<std::ffi::OsString>,
    prefix: Option<std::ffi::OsString>,
) -> Vec<(String, PathBuf)> {
    let name = SONAME;
    let mut out = Vec::new();
    if let Some(p) = over.filter(|p| !p.is_empty()) {
        // an explicit choice: no other library stands in for it
        out.push(("RESTY_FFI_LIBNODE".to_string(), PathBuf::from(p)));
        return out;
    }
    out.push((
        format!("Debian's {}", package()),
        Path::new("/usr/lib").join(multiarch()).join(name),
    ));
    let prefix = prefix
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/resty-ffi/libnode"));
    out.push((
        "ci/setup-nodejs.sh's prefix".to_string(),
        prefix.join("usr/lib").join(multiarch()).join(name),
    ));
    out
}

/// Opens the first candidate that loads; returns its dlopen handle and
/// path. The error names every candidate and what to do.
pub fn open() -> Result<(*mut c_void, PathBuf), String> {
    open_first(candidates())
}

fn open_first(candidates: Vec<(String, PathBuf)>) -> Result<(*mut c_void, PathBuf), String> {
    let mut tried = Vec::new();
    for (from, path) in candidates {
        if !path.exists() {
            tried.push(format!("{} ({from}): no such file", path.display()));
            continue;
        }
        let missing: Vec<String> = SHARED_BUILTINS
            .iter()
            .filter(|(f, _)| !Path::new(f).exists())
            .map(|(f, pkg)| format!("{f} ({pkg})"))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "{} needs Debian's node-acorn, node-cjs-module-lexer and node-undici, and would abort the worker without them; missing: {}. Install them: apt install node-acorn node-cjs-module-lexer node-undici",
                path.display(),
                missing.join(", ")
            ));
        }
        let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
            tried.push(format!("{} ({from}): path has a NUL byte", path.display()));
            continue;
        };
        // SAFETY: dlopen with a C string; libnode's initialisers have no
        // preconditions. The handle is never closed.
        let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if h.is_null() {
            tried.push(format!("{} ({from}): {}", path.display(), dlerror()));
            continue;
        }
        return Ok((h, path));
    }
    Err(format!(
        "no usable libnode.so.{MODULE_VERSION} (this loader is built for Node's module version {MODULE_VERSION}); tried: {}. Install it: apt install {} (or run ci/setup-nodejs.sh), or name the library with `env RESTY_FFI_LIBNODE=/path/to/libnode.so.{MODULE_VERSION};` in nginx.conf",
        tried.join("; "),
        package()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_the_env_alone_or_debian_then_prefix() {
        let c = candidates_from(Some("/opt/n/libnode.so".into()), Some("/p".into()));
        assert_eq!(
            c,
            vec![(
                "RESTY_FFI_LIBNODE".to_string(),
                PathBuf::from("/opt/n/libnode.so")
            )]
        );
        let c = candidates_from(None, Some("/p".into()));
        let paths: Vec<String> = c.iter().map(|(_, p)| p.display().to_string()).collect();
        let name = format!("libnode.so.{MODULE_VERSION}");
        assert_eq!(
            paths,
            vec![
                format!("/usr/lib/{}/{name}", multiarch()),
                format!("/p/usr/lib/{}/{name}", multiarch()),
            ]
        );
        let c = candidates_from(None, None);
        assert_eq!(c.len(), 2);
        assert!(c[1].1.starts_with("/var/cache/resty-ffi/libnode"));
    }

    #[test]
    fn a_missing_library_is_named_with_what_to_do() {
        let err = open_first(vec![(
            "test".into(),
            PathBuf::from("/nonexistent/libnode.so"),
        )])
        .unwrap_err();
        assert!(
            err.contains("/nonexistent/libnode.so (test): no such file"),
            "{err}"
        );
        assert!(err.contains("apt install libnode"), "{err}");
        assert!(err.contains("env RESTY_FFI_LIBNODE="), "{err}");
    }
}
