//! The loader's one error type. At the ABI each error becomes the return
//! code of `libffi_init` (so `load_ffi` fails) plus a line in nginx's
//! error.log saying what failed, with what input, and what to do.

use thiserror::Error;

use crate::cfg::SYNTAX;

#[derive(Debug, Error)]
pub enum Error {
    #[error("bad cfg '{cfg}': {reason} (want \"{SYNTAX}\")")]
    Cfg { cfg: String, reason: String },
    #[error("cannot start the JVM: {0}")]
    Jvm(String),
    #[error("{0}")]
    Class(String),
    #[error("{0}")]
    Method(String),
    #[error("{0}")]
    Signature(String),
    #[error("{0}")]
    InitThrew(String),
    #[error("{what}")]
    InitReturned { what: String, rc: i32 },
    #[error("{0}")]
    BadReturn(String),
    #[error("cannot start the handler: {0}")]
    Serve(String),
    #[error("JNI: {0}")]
    Jni(#[from] jni::errors::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Turns `Boot.start`'s "kind\tmessage" into an error.
    pub fn from_boot(text: &str) -> Error {
        let (kind, msg) = text.split_once('\t').unwrap_or(("", text));
        let msg = msg.to_string();
        match kind {
            "class" => Error::Class(msg),
            "method" => Error::Method(msg),
            "signature" => Error::Signature(msg),
            "threw" => Error::InitThrew(msg),
            "returned" => {
                let (rc, what) = msg.split_once('\t').unwrap_or(("1", &msg));
                Error::InitReturned {
                    what: what.to_string(),
                    rc: rc.parse().unwrap_or(1),
                }
            }
            "badreturn" => Error::BadReturn(msg),
            "serve" => Error::Serve(msg),
            _ => Error::Internal(text.to_string()),
        }
    }
}

impl resty_ffi_loader::InitError for Error {
    /// The code `libffi_init` returns; a runtime's own non-zero code passes
    /// through unchanged.
    fn rc(&self) -> i32 {
        match self {
            Error::Cfg { .. } => 2,
            Error::Jvm(_) => 3,
            Error::Class(_) => 5,
            Error::Method(_) | Error::Signature(_) => 6,
            Error::InitThrew(_) => 7,
            Error::InitReturned { rc, .. } => *rc,
            Error::BadReturn(_) => 8,
            Error::Serve(_) => 9,
            Error::Jni(_) | Error::Internal(_) => 10,
        }
    }
    fn from_panic(text: String) -> Self {
        Error::Internal(text)
    }
}

#[cfg(test)]
mod tests {
    use super::Error;
    use resty_ffi_loader::InitError;

    #[test]
    fn boot_answers_map_to_errors_and_codes() {
        let e = Error::from_boot("returned\t7\tdemo.App.init(cfg, tq) returned 7");
        assert_eq!(e.rc(), 7);
        assert_eq!(e.to_string(), "demo.App.init(cfg, tq) returned 7");
        assert_eq!(Error::from_boot("class\tx not found").rc(), 5);
        assert_eq!(
            Error::from_boot("class\tclass x not found").to_string(),
            "class x not found"
        );
        assert_eq!(Error::from_boot("signature\ts").rc(), 6);
        assert_eq!(Error::from_boot("what").rc(), 10);
    }
}
