//! The grammar every loader's cfg string shares, lua-resty-ffi's:
//! `TARGET,NAME[,rest]`, where TARGET is what the language loads (a class,
//! a module, with the loader's own prefixes and a trailing `?` that asks
//! for a fresh load) and NAME is the method or function to call with
//! `rest`.
//!
//! The loaders (loader/python3, loader/java, loader/nodejs) read TARGET
//! their own way; the comma split, the `?` suffix and the identifier check
//! of NAME are the same in all three, so they live here once. Errors are
//! plain text saying what is wrong; each loader wraps them in its own
//! error type with its syntax.

/// How a loader names the parts of its cfg, for the error texts.
#[derive(Debug, Clone, Copy)]
pub struct Words {
    /// What TARGET is: "class", "module".
    pub target: &'static str,
    /// What NAME is: "method", "function".
    pub name: &'static str,
    /// NAME as the loader's syntax writes it: "method", "func".
    pub name_in_syntax: &'static str,
    /// The language whose identifiers NAME must be: "Java", "Python".
    pub language: &'static str,
    /// Whether identifiers may hold `$` (Java, JavaScript).
    pub dollar: bool,
}

/// A cfg cut at its commas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts<'a> {
    /// Before the first comma, untouched (a `?` included).
    pub target: &'a str,
    /// Between the first and the second comma: an identifier.
    pub name: &'a str,
    /// After the second comma; None when there is none.
    pub rest: Option<&'a str>,
}

/// Cuts `cfg` at its first two commas and checks that NAME is an
/// identifier of `words.language`; the error says what is wrong.
pub fn split<'a>(cfg: &'a str, words: &Words) -> Result<Parts<'a>, String> {
    let (target, tail) = cfg.split_once(',').ok_or_else(|| {
        format!(
            "no {} name: the {} must be followed by ',{}'",
            words.name, words.target, words.name_in_syntax
        )
    })?;
    let (name, rest) = match tail.split_once(',') {
        Some((n, r)) => (n, Some(r)),
        None => (tail, None),
    };
    if !is_identifier(name, words.dollar) {
        return Err(format!(
            "{} name '{name}' is not a {} identifier",
            words.name, words.language
        ));
    }
    Ok(Parts { target, name, rest })
}

/// Strips the trailing `?` that asks for a fresh load; true when it was
/// there.
pub fn strip_reload(s: &str) -> (&str, bool) {
    match s.strip_suffix('?') {
        Some(t) => (t, true),
        None => (s, false),
    }
}

/// An identifier: a letter or `_` (or `$` where `dollar`), then letters,
/// digits, `_` (or `$`).
pub fn is_identifier(s: &str, dollar: bool) -> bool {
    let word = |c: char| c == '_' || (dollar && c == '$');
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if word(c) || c.is_alphabetic())
        && chars.all(|c| word(c) || c.is_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORDS: Words = Words {
        target: "module",
        name: "function",
        name_in_syntax: "func",
        language: "Python",
        dollar: false,
    };

    #[test]
    fn cuts_at_the_first_two_commas_only() {
        let p = split("a.b?,init,x,y", &WORDS).unwrap();
        assert_eq!(
            p,
            Parts {
                target: "a.b?",
                name: "init",
                rest: Some("x,y")
            }
        );
        assert_eq!(split("m,f", &WORDS).unwrap().rest, None);
        assert_eq!(split("m,f,", &WORDS).unwrap().rest, Some(""));
    }

    #[test]
    fn errors_name_the_parts_as_the_loader_calls_them() {
        assert_eq!(
            split("m", &WORDS).unwrap_err(),
            "no function name: the module must be followed by ',func'"
        );
        assert_eq!(
            split("m,1f", &WORDS).unwrap_err(),
            "function name '1f' is not a Python identifier"
        );
        assert!(split("m,", &WORDS).is_err());
    }

    #[test]
    fn dollar_is_an_identifier_character_only_where_the_language_says() {
        assert!(is_identifier("$make", true));
        assert!(is_identifier("a$b_1", true));
        assert!(!is_identifier("$make", false));
        assert!(is_identifier("_x9", false));
        assert!(is_identifier("é", false));
        assert!(!is_identifier("", true));
        assert!(!is_identifier("9a", true));
        assert!(!is_identifier("a-b", true));
    }

    #[test]
    fn reload_suffix_is_stripped_once() {
        assert_eq!(strip_reload("m?"), ("m", true));
        assert_eq!(strip_reload("m"), ("m", false));
        assert_eq!(strip_reload("m??"), ("m?", true));
    }
}
