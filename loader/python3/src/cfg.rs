//! The loader's cfg string: `[venv=PATH:][dir/]pkg.module[?],func[,rest]`.
//!
//! The part after `venv=...:` is lua-resty-ffi's Python loader syntax, so
//! its configurations work unchanged: `dir` goes first on sys.path, `?`
//! reloads an already imported module, `func(cfg, tq)` receives `rest` (or
//! None when there is no second comma). The `venv=PATH:` prefix is ours: it
//! names a virtualenv whose site-packages this runtime needs.

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

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
}

/// Parses a cfg; the error says what is wrong with it.
pub fn parse(cfg: &str) -> Result<Spec, String> {
    let (head, tail) = cfg
        .split_once(',')
        .ok_or("no function name: the module must be followed by ',func'")?;
    let (func, rest) = match tail.split_once(',') {
        Some((f, r)) => (f, Some(r.to_string())),
        None => (tail, None),
    };
    if !is_identifier(func) {
        return Err(format!("function name '{func}' is not a Python identifier"));
    }
    let (venv, path) = match head.strip_prefix("venv=") {
        Some(v) => {
            let (venv, path) = v
                .split_once(':')
                .ok_or("venv=PATH must end with ':' before the module")?;
            if venv.is_empty() {
                return Err("venv= names no folder".into());
            }
            (Some(venv.to_string()), path)
        }
        None => (None, head),
    };
    let (dir, module) = match path.rsplit_once('/') {
        Some(("", m)) => (Some("/".to_string()), m),
        Some((d, m)) => (Some(d.to_string()), m),
        None => (None, path),
    };
    let (module, reload) = match module.strip_suffix('?') {
        Some(m) => (m, true),
        None => (module, false),
    };
    if module.is_empty() || !module.split('.').all(is_identifier) {
        return Err(format!(
            "module name '{module}' is not a dotted Python name like pkg.module"
        ));
    }
    Ok(Spec {
        venv,
        dir,
        module: module.to_string(),
        reload,
        func: func.to_string(),
        rest,
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
