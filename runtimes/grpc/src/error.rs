//! The crate's one error type. At the C ABI it becomes a return code and a
//! message (see [`Error::rc`]): a gRPC status keeps its code (1-16), and so
//! do transport failures and deadlines, which gRPC clients report as
//! statuses too (UNAVAILABLE, DEADLINE_EXCEEDED); a call refused before
//! anything was sent (bad input, misuse) is [`BAD_INPUT_RC`]. Lua
//! (resty/ffi/grpc.lua) turns both into `false, code, err, status`.

use std::fmt::Write;

use base64::Engine;

/// rc of calls refused before anything was sent: bad input (unknown
/// method, a table that does not fit, bad metadata or options) or misuse
/// (a closed connection or stream).
pub const BAD_INPUT_RC: i32 = 100;

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
    /// A gRPC status: from the server, or made here for a transport failure
    /// (UNAVAILABLE: cannot connect, TLS handshake, connection lost) or a
    /// deadline (DEADLINE_EXCEEDED).
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
            _ => BAD_INPUT_RC,
        }
    }

    /// The answer's bytes: for a status, its metadata as a JSON object, a
    /// newline, its details (grpc-status-details-bin, base64; may be
    /// empty), a newline, then the message; otherwise the error text.
    pub fn body(&self) -> Vec<u8> {
        match self {
            Error::Status(s) => {
                let mut out = crate::metadata::to_json(s.metadata());
                out.push(b'\n');
                if !s.details().is_empty() {
                    out.extend_from_slice(
                        base64::engine::general_purpose::STANDARD
                            .encode(s.details())
                            .as_bytes(),
                    );
                }
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
    /// A status tonic made from a transport error (an h2 or I/O error: the
    /// connection broke mid-call) is UNKNOWN with that error as its source;
    /// gRPC clients report a lost connection as UNAVAILABLE, and so do we.
    /// A server's own UNKNOWN has no source and stays UNKNOWN.
    fn from(s: tonic::Status) -> Self {
        if s.code() == tonic::Code::Unknown && std::error::Error::source(&s).is_some() {
            return Error::Status(tonic::Status::unavailable(status_message(&s)));
        }
        Error::Status(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_failures_are_unavailable_and_server_statuses_stay() {
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
        let lost = tonic::Status::from_error(Box::new(io));
        assert_eq!(Error::from(lost).rc(), tonic::Code::Unavailable as i32);
        let server = tonic::Status::unknown("the handler failed");
        assert_eq!(Error::from(server).rc(), tonic::Code::Unknown as i32);
        let e = Error::from(tonic::Status::with_details(
            tonic::Code::Aborted,
            "m",
            b"\x01\x02why".to_vec().into(),
        ));
        assert_eq!(e.rc(), 10);
        assert_eq!(e.body(), b"{}\nAQJ3aHk=\nm");
        assert_eq!(Error::UnknownMethod("/x".into()).rc(), BAD_INPUT_RC);
    }
}
