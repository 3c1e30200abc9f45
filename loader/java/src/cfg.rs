//! The loader's cfg string: `pkg.Class[?],method[,rest]`, lua-resty-ffi's
//! Java loader syntax.
//!
//! `?` loads the class through a fresh class loader (so a changed class is
//! picked up after `rt:__unload()`); `method` receives `rest`. As in
//! lua-resty-ffi, `rest` is "" when a `?` cfg has no second comma and null
//! when a plain one has none.

use resty_ffi_loader::cfg::{self, Words};

/// A parsed cfg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Binary name with dots: `demo.echo.App`, `demo.Outer$Inner`.
    pub class: String,
    pub reload: bool,
    pub method: String,
    pub rest: Option<String>,
}

pub const SYNTAX: &str = "pkg.Class[?],method[,rest]";

const WORDS: Words = Words {
    target: "class",
    name: "method",
    name_in_syntax: "method",
    language: "Java",
    dollar: true,
};

/// Parses a cfg; the error says what is wrong with it.
pub fn parse(cfg: &str) -> Result<Spec, String> {
    let parts = cfg::split(cfg, &WORDS)?;
    let (class, reload) = cfg::strip_reload(parts.target);
    if class.is_empty() || !class.split('.').all(|p| cfg::is_identifier(p, true)) {
        return Err(format!(
            "class name '{class}' is not a Java class name like pkg.Class"
        ));
    }
    let rest = match (parts.rest, reload) {
        (None, true) => Some(String::new()),
        (r, _) => r.map(str::to_string),
    };
    Ok(Spec {
        class: class.to_string(),
        reload,
        method: parts.name.to_string(),
        rest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lua_resty_ffi_syntax_parses_as_it_does() {
        let s = parse("demo.echo.App?,init,").unwrap();
        assert_eq!(s.class, "demo.echo.App");
        assert!(s.reload);
        assert_eq!(s.method, "init");
        assert_eq!(s.rest.as_deref(), Some(""));

        let s = parse("demo.kafka.App,init,{\"a\":1,\"b\":2}").unwrap();
        assert!(!s.reload);
        assert_eq!(s.rest.as_deref(), Some("{\"a\":1,\"b\":2}"));

        // no second comma: null, or "" with '?' (lua-resty-ffi's Loader)
        assert_eq!(parse("App,init").unwrap().rest, None);
        assert_eq!(parse("App?,init").unwrap().rest.as_deref(), Some(""));
        assert_eq!(parse("a.Outer$Inner,m").unwrap().class, "a.Outer$Inner");
    }

    #[test]
    fn bad_cfgs_say_what_is_wrong() {
        assert!(parse("demo.App").unwrap_err().contains("no method name"));
        assert!(parse("demo.App,")
            .unwrap_err()
            .contains("not a Java identifier"));
        assert!(parse("demo..App,init").unwrap_err().contains("pkg.Class"));
        assert!(parse("demo/App,init").unwrap_err().contains("pkg.Class"));
        assert!(parse("?,init").unwrap_err().contains("pkg.Class"));
        assert!(parse("App,1init").unwrap_err().contains("identifier"));
    }
}
