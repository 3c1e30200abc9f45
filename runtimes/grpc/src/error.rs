//! The crate's one error type. At the C ABI it becomes a return code and a
//! message (see [`Error::rc`]): gRPC statuses keep their code (1-16) so Lua
//! can name them; everything that failed on our side is [`LOCAL_RC`].

use std::fmt::Write;

/// rc of errors that never reached a server (bad input, unknown method,
/// closed connection, cannot connect).
pub const LOCAL_RC: i32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ffi_grpc: cannot compile {name}: {reason}")]
    Proto { name: String, reason: String },
    #[error(
        "ffi_grpc: unknown method '{0}': load its .proto first (grpc.loadfile / grpc.load) and \
         write the path as /package.Service/Method"
    )]
    UnknownMethod(String),
    #[error("ffi_grpc: '{path}' is a {kind} method: call it with {with}")]
    WrongKind {
        path: String,
        kind: &'static str,
        with: &'static str,
    },
    #[error("ffi_grpc: the table does not fit message {message}: {reason}")]
    BadMessage { message: String, reason: String },
    #[error("ffi_grpc: bad target '{target}': {reason}")]
    BadTarget { target: String, reason: String },
    #[error("ffi_grpc: cannot connect to {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error("ffi_grpc: bad TLS settings for {target}: {reason}")]
    Tls { target: String, reason: String },
    #[error("ffi_grpc: bad metadata: {0}")]
    Metadata(String),
    #[error("ffi_grpc: connection {0} is closed")]
    NoConnection(u64),
    #[error("ffi_grpc: stream {0} is closed")]
    NoStream(u64),
    #[error("ffi_grpc: stream {0}: sending is closed (close_send was called or the call ended; recv() tells how)")]
    SendClosed(u64),
    #[error("ffi_grpc: bad request from the Lua side: {0}")]
    Request(String),
    #[error("ffi_grpc: {0}")]
    Init(String),
    /// A gRPC status from the server (or the transport, or a deadline).
    #[error("{}", status_line(.0))]
    Status(tonic::Status),
}

fn status_line(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

impl Error {
    /// The rc the task is answered with.
    pub fn rc(&self) -> i32 {
        match self {
            Error::Status(s) => s.code() as i32,
            _ => LOCAL_RC,
        }
    }

    /// The answer's bytes: for a status, its metadata as a JSON object, a
    /// newline, then the message; otherwise the error text.
    pub fn body(&self) -> Vec<u8> {
        match self {
            Error::Status(s) => {
                let mut out = crate::metadata::to_json(s.metadata());
                out.push(b'\n');
                out.extend_from_slice(status_message(s).as_bytes());
                out
            }
            other => other.to_string().into_bytes(),
        }
    }
}

/// The status message, completed with its source chain when tonic made it
/// (transport errors carry the reason only there).
pub fn status_message(s: &tonic::Status) -> String {
    let mut msg = s.message().to_string();
    let mut src = std::error::Error::source(s);
    while let Some(e) = src {
        let text = e.to_string();
        if !msg.contains(&text) {
            let _ = write!(msg, ": {text}");
        }
        src = e.source();
    }
    msg
}

/// An error and its sources as one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !msg.contains(&text) {
            let _ = write!(msg, ": {text}");
        }
        src = s.source();
    }
    msg
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Error::Status(s)
    }
}
