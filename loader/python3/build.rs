//! Records which CPython the loader embeds, so the interpreter it creates
//! inside an nginx worker computes its prefix (standard library,
//! site-packages) from that Python's path rather than from nginx's.
//!
//! pyo3 links libpython of the interpreter named by PYO3_PYTHON (the
//! workspace's .cargo/config.toml sets Debian's /usr/bin/python3.11, which
//! workers running as `nobody` can read).

fn main() {
    let cfg = pyo3_build_config::get();
    let exe = cfg
        .executable
        .clone()
        .unwrap_or_else(|| format!("/usr/bin/python{}.{}", cfg.version.major, cfg.version.minor));
    println!("cargo:rustc-env=FFI_PYTHON3_EXECUTABLE={exe}");
    println!(
        "cargo:rustc-env=FFI_PYTHON3_VERSION={}.{}",
        cfg.version.major, cfg.version.minor
    );
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
