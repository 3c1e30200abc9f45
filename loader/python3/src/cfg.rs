//! The loader's cfg string: `[venv=PATH:][dir/]pkg.module[?],func[,rest]`.
//!
//! The part after `venv=...:` is lua-resty-ffi's Python loader syntax, so
//! its configurations work unchanged: `dir` goes first on sys.path, `?`
//! reloads an already imported module, `func(cfg, tq)` receives `rest` (or
//! None when there is no second comma). The `venv=PATH:` prefix is ours: it
//! names a virtualenv whose site-packages this runtime needs.

use resty_ffi_loader::cfg::{self, Words};

/// A parsed cfg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub venv: Option<String>,
    pub dir: Option<String>,
    pub module: String,
    pub reload: bool,
    pub func: String,
    pub rest: Option<String>,
}

pub const SYNTAX: &str = "[venv=PATH:][dir/]pkg.module[?],func[,rest]";

const WORDS: Words = Words {
    target: "module",
    name: "function",
    name_in_syntax: "func",
    language: "Python",
    dollar: false,
};

/// Parses a cfg; the error says what is wrong with it.
pub fn parse(cfg: &str) -> Result<Spec, String> {
    let parts = cfg::split(cfg, &WORDS)?;
    let (venv, path) = match parts.target.strip_prefix("venv=") {
        Some(v) => {
            let (venv, path) = v
                .split_once(':')
                .ok_or("venv=PATH must end with ':' before the module")?;
            if venv.is_empty() {
                return Err("venv= names no folder".into());
            }
            (Some(venv.to_string()), path)
        }
        None => (None, parts.target),
    };
    let (dir, module) = match path.rsplit_once('/') {
        Some(("", m)) => (Some("/".to_string()), m),
        Some((d, m)) => (Some(d.to_string()), m),
        None => (None, path),
    };
    let (module, reload) = cfg::strip_reload(module);
    if module.is_empty() || !module.split('.').all(|p| cfg::is_identifier(p, false)) {
        return Err(format!(
            "module name '{module}' is not a dotted Python name like pkg.module"
        ));
    }
    Ok(Spec {
        venv,
        dir,
        module: module.to_string(),
        reload,
        func: parts.name.to_string(),
        rest: parts.rest.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lua_resty_ffi_syntax_parses_as_it_does() {
        let s = parse("ffi.echo?,init").unwrap();
        assert_eq!(s.module, "ffi.echo");
        assert!(s.reload);
        assert_eq!(s.func, "init");
        assert_eq!(s.rest, None);
        assert_eq!(s.dir, None);
        assert_eq!(s.venv, None);

        let s = parse("/srv/app/ffi.kafka,init,{\"a\":1,\"b\":2}").unwrap();
        assert_eq!(s.dir.as_deref(), Some("/srv/app"));
        assert!(!s.reload);
        assert_eq!(s.rest.as_deref(), Some("{\"a\":1,\"b\":2}"));

        assert_eq!(parse("m,f,").unwrap().rest.as_deref(), Some(""));
        assert_eq!(parse("/m,f").unwrap().dir.as_deref(), Some("/"));
    }

    #[test]
    fn venv_prefix_names_a_virtualenv() {
        let s = parse("venv=/var/cache/v:/srv/app/ffi.render,init,x").unwrap();
        assert_eq!(s.venv.as_deref(), Some("/var/cache/v"));
        assert_eq!(s.dir.as_deref(), Some("/srv/app"));
        assert_eq!(s.module, "ffi.render");
        assert_eq!(s.rest.as_deref(), Some("x"));
    }

    #[test]
    fn bad_cfgs_say_what_is_wrong() {
        assert!(parse("ffi.echo").unwrap_err().contains("no function name"));
        assert!(parse("ffi.echo,")
            .unwrap_err()
            .contains("not a Python identifier"));
        assert!(parse("ffi..echo,init").unwrap_err().contains("dotted"));
        assert!(parse("dir/,init").unwrap_err().contains("dotted"));
        assert!(parse("venv=/x,init").unwrap_err().contains("':'"));
        assert!(parse("venv=:m,init").unwrap_err().contains("no folder"));
        assert!(parse("m,1init").unwrap_err().contains("identifier"));
    }
}
