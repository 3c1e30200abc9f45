//! The loader's cfg string: `[dir/]module[?],func[,rest]`, as
//! lua-resty-ffi's Node loader reads it.
//!
//! `[dir/]module` is what `require` gets: a name found through NODE_PATH
//! and node_modules folders (`demo/echo` is NODE_PATH's demo/echo.js), an
//! absolute path, or a path starting with `./` or `../` (relative to the
//! first NODE_PATH folder, as lua-resty-ffi resolves it, else the worker's
//! working directory). A trailing `?` reloads the module if it was loaded
//! before (after `rt:__unload()`). `func` is called with `rest` (`''` when
//! there is no second comma, as lua-resty-ffi passes).

use resty_ffi_loader::cfg::{self, Words};

/// A parsed cfg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub module: String,
    pub reload: bool,
    pub func: String,
    pub rest: Option<String>,
}

pub const SYNTAX: &str = "[dir/]module[?],func[,rest]";

const WORDS: Words = Words {
    target: "module",
    name: "function",
    name_in_syntax: "func",
    language: "JavaScript",
    dollar: true,
};

/// Parses a cfg; the error says what is wrong with it.
pub fn parse(cfg: &str) -> Result<Spec, String> {
    let parts = cfg::split(cfg, &WORDS)?;
    let (module, reload) = cfg::strip_reload(parts.target);
    if module.is_empty() || module.ends_with('/') {
        return Err(format!("module '{module}' names no module"));
    }
    Ok(Spec {
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
        let s = parse("demo/echo,init").unwrap();
        assert_eq!(s.module, "demo/echo");
        assert!(!s.reload);
        assert_eq!(s.func, "init");
        assert_eq!(s.rest, None);

        let s = parse("demo/echo?,init").unwrap();
        assert_eq!(s.module, "demo/echo");
        assert!(s.reload);

        let s = parse("/srv/app/kafka.js,start,{\"a\":1,\"b\":2}").unwrap();
        assert_eq!(s.module, "/srv/app/kafka.js");
        assert_eq!(s.func, "start");
        assert_eq!(s.rest.as_deref(), Some("{\"a\":1,\"b\":2}"));

        assert_eq!(parse("m,f,").unwrap().rest.as_deref(), Some(""));
        assert_eq!(parse("@scope/pkg,$make").unwrap().module, "@scope/pkg");
    }

    #[test]
    fn bad_cfgs_say_what_is_wrong() {
        assert!(parse("demo/echo").unwrap_err().contains("no function name"));
        assert!(parse("demo/echo,").unwrap_err().contains("identifier"));
        assert!(parse("m,1init").unwrap_err().contains("identifier"));
        assert!(parse(",init").unwrap_err().contains("names no module"));
        assert!(parse("?,init").unwrap_err().contains("names no module"));
        assert!(parse("demo/,init").unwrap_err().contains("names no module"));
    }
}
