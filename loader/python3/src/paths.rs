//! sys.path for a runtime: its `dir` first, and its venv's site-packages.
//!
//! One interpreter serves every Python runtime of a worker, so sys.path is
//! shared: a dir or venv named by one runtime is visible to all. Each is
//! added once; a venv's site-packages go before the system's so the venv's
//! versions of a package win, as they would inside an activated venv.

use std::path::Path;

use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::interpreter::{EXECUTABLE, VERSION};

fn sys_path<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
    Ok(py
        .import("sys")?
        .getattr("path")?
        .downcast_into::<PyList>()?)
}

/// Puts `dir` first on sys.path (moving it there if already present).
pub fn prepend(py: Python<'_>, dir: &str) -> PyResult<()> {
    let path = sys_path(py)?;
    while path.contains(dir)? {
        path.call_method1("remove", (dir,))?;
    }
    path.insert(0, dir)
}

/// Readable check with an error message that names the worker's user.
fn check_dir(p: &Path, what: &str) -> Result<(), String> {
    match std::fs::read_dir(p) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!("{what} {} does not exist", p.display())),
        Err(e) => Err(format!(
            "cannot read {what} {} as uid {} ({e}): nginx workers run as an unprivileged user (`user` in nginx.conf); put the venv in a world-readable folder such as /var/cache or /opt, not under /root",
            p.display(),
            // SAFETY: getuid has no preconditions.
            unsafe { libc::getuid() }
        )),
    }
}

/// Adds the site-packages of the virtualenv at `venv` (made with
/// `python3.X -m venv`, X the version the loader embeds), `.pth` files
/// included, ahead of the system's site-packages.
pub fn add_venv(py: Python<'_>, venv: &str) -> Result<(), String> {
    let root = Path::new(venv);
    check_dir(root, "venv")?;
    let site = root.join(format!("lib/python{VERSION}/site-packages"));
    if !site.is_dir() {
        return Err(format!(
            "no lib/python{VERSION}/site-packages in it: the loader embeds {EXECUTABLE}, so make the venv with `{EXECUTABLE} -m venv {venv}`"
        ));
    }
    check_dir(&site, "site-packages")?;
    let site = site.to_string_lossy().into_owned();
    add_site_dir(py, &site).map_err(|e| format!("adding {site}: {e}"))
}

fn add_site_dir(py: Python<'_>, site: &str) -> PyResult<()> {
    let path = sys_path(py)?;
    if path.contains(site)? {
        return Ok(());
    }
    let before: Vec<String> = path.extract()?;
    py.import("site")?.call_method1("addsitedir", (site,))?;
    // addsitedir appends; move what it added ahead of the first
    // site-packages / dist-packages entry.
    let after: Vec<String> = path.extract()?;
    let added: Vec<String> = after.into_iter().filter(|p| !before.contains(p)).collect();
    let at = before
        .iter()
        .position(|p| p.ends_with("site-packages") || p.ends_with("dist-packages"))
        .unwrap_or(before.len());
    let mut order = before;
    for (i, p) in added.into_iter().enumerate() {
        order.insert(at + i, p);
    }
    path.call_method1("__setitem__", (pyo3::types::PySlice::full(py), order))?;
    Ok(())
}
