//! Explains a runtime library the dynamic linker found but could not load
//! because a library it was linked against is missing.
//!
//! A loader built on another release fails with nothing but the linker's
//! "libpython3.11.so.1.0: cannot open shared object file" (a Debian 12
//! build on Debian 13, which has libpython3.13). The load error then says
//! which library the runtime was built against and which versions of it
//! this system does have, so the fix (install that one, or use a build made
//! for this system) is plain.

use std::path::Path;

const NOT_FOUND: &str = ": cannot open shared object file";

/// The file name of the library `path` needs and the linker did not find,
/// read from dlerror's text `reason`; None when the text is about `path`
/// itself or about something else.
pub fn missing_dependency(path: &str, reason: &str) -> Option<String> {
    let end = reason.find(NOT_FOUND)?;
    let dep = reason[..end].rsplit([' ', '"']).next()?;
    let base = |p: &str| Path::new(p).file_name().map(|n| n.to_owned());
    if dep.is_empty() || dep == path || base(dep) == base(path) {
        return None;
    }
    Some(dep.to_string())
}

/// The folders the dynamic linker searches by default on Debian and most
/// distributions, after LD_LIBRARY_PATH.
fn linker_dirs() -> Vec<String> {
    let triple = format!("{}-linux-gnu", std::env::consts::ARCH);
    let mut dirs: Vec<String> = std::env::var("LD_LIBRARY_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect();
    for d in ["/lib", "/usr/lib", "/usr/local/lib"] {
        dirs.push(format!("{d}/{triple}"));
        dirs.push(d.to_string());
    }
    dirs.push("/lib64".into());
    dirs.push("/usr/lib64".into());
    dirs
}

/// The versions of `dep` (same name up to its version) installed here:
/// for "libpython3.11.so.1.0", say ["libpython3.13.so.1.0"].
pub fn other_versions(dep: &str) -> Vec<String> {
    other_versions_in(dep, &linker_dirs())
}

/// [`other_versions`] in the given folders. Each version is named once, by
/// its longest file name (the real file behind the .so and .so.N links).
pub fn other_versions_in<S: AsRef<str>>(dep: &str, dirs: &[S]) -> Vec<String> {
    let stem_len = dep
        .find(|c: char| c.is_ascii_digit())
        .or_else(|| dep.find(".so"))
        .unwrap_or(dep.len());
    let stem = &dep[..stem_len];
    let dep_version = version_of(dep, stem);
    let mut found: Vec<String> = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir.as_ref()) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(stem) else {
                continue;
            };
            // the stem must end where the version starts: libpython3.13,
            // not libpythonista
            if !rest.starts_with(|c: char| c.is_ascii_digit() || c == '.') || !name.contains(".so")
            {
                continue;
            }
            let version = version_of(&name, stem);
            if version == dep_version {
                continue;
            }
            match found.iter_mut().find(|f| version_of(f, stem) == version) {
                Some(f) if f.len() < name.len() => *f = name,
                Some(_) => {}
                None => found.push(name),
            }
        }
    }
    found.sort();
    found
}

/// "3.13" for "libpython3.13.so.1.0" with stem "libpython".
fn version_of<'a>(name: &'a str, stem: &str) -> &'a str {
    let rest = &name[stem.len().min(name.len())..];
    rest.split(".so").next().unwrap_or(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REASON: &str =
        "libpython3.11.so.1.0: cannot open shared object file: No such file or directory";

    #[test]
    fn a_missing_dependency_is_told_from_a_missing_library() {
        let lib = "/usr/lib/x86_64-linux-gnu/lua/5.1/libffi_python3.so";
        assert_eq!(
            missing_dependency(lib, REASON).as_deref(),
            Some("libpython3.11.so.1.0")
        );
        let own = format!("{lib}{NOT_FOUND}: No such file or directory");
        assert_eq!(missing_dependency(lib, &own), None);
        assert_eq!(
            missing_dependency("libffi_python3.so", &own.replace(lib, "libffi_python3.so")),
            None
        );
        assert_eq!(missing_dependency(lib, "undefined symbol: foo"), None);
    }

    #[test]
    fn other_versions_name_each_installed_version_once_by_its_real_file() {
        let dir = std::env::temp_dir().join(format!("resty-ffi-needed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for f in [
            "libpython3.13.so.1.0",
            "libpython3.13.so.1",
            "libpython3.13.so",
            "libpython3.12.so.1.0",
            "libpython3.11.a",
            "libpythonista.so.1",
            "libperl.so.5.40",
        ] {
            std::fs::write(dir.join(f), b"").unwrap();
        }
        let dirs = [dir.to_string_lossy().into_owned()];
        assert_eq!(
            other_versions_in("libpython3.11.so.1.0", &dirs),
            ["libpython3.12.so.1.0", "libpython3.13.so.1.0"]
        );
        assert_eq!(
            other_versions_in("libpython3.13.so.1.0", &dirs),
            ["libpython3.12.so.1.0"]
        );
        assert!(other_versions_in("libnode115.so", &dirs).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
