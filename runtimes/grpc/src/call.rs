//! Unary calls, and what every call shares: the parsed call header, the
//! request built from the handle's defaults plus the call's own deadline
//! and metadata.
//!
//! Wire format from Lua (one task):
//! `U<conn>\t<call id>\t<timeout_ms>\t<flags>\t<path>\n` then the metadata
//! JSON object (may be empty), `\n`, then the message JSON. cjson never
//! writes a raw newline, so the two `\n` are unambiguous. Flag `m`: answer
//! with the response metadata JSON, `\n`, the message. The call id is what
//! Lua cancels the call by (cancel.rs).

use std::time::Duration;

use http::uri::PathAndQuery;
use prost_reflect::{DynamicMessage, MethodDescriptor};
use tonic::client::Grpc;
use tonic::{Request, Status};

use crate::abi::TaskHandle;
use crate::codec::{self, DynamicCodec};
use crate::conn::{self, Conn};
use crate::error::Error;

/// The parsed header of a unary call or a new stream.
pub struct Head<'a> {
    pub conn: u64,
    /// the id Lua cancels the call by (0: none)
    pub call: u64,
    pub timeout: Option<Duration>,
    pub flags: &'a str,
    pub path: &'a str,
    pub metadata: &'a [u8],
    pub body: &'a [u8],
}

fn split(s: &[u8], sep: u8) -> (&[u8], &[u8]) {
    match s.iter().position(|&b| b == sep) {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, &[]),
    }
}

fn text(b: &[u8]) -> Result<&str, Error> {
    std::str::from_utf8(b).map_err(|_| Error::Request("header is not UTF-8".into()))
}

pub fn number(b: &[u8]) -> Result<u64, Error> {
    text(b)?
        .parse()
        .map_err(|_| Error::Request(format!("bad number '{}'", String::from_utf8_lossy(b))))
}

impl<'a> Head<'a> {
    pub fn parse(req: &'a [u8]) -> Result<Head<'a>, Error> {
        let (line, rest) = split(req, b'\n');
        let (metadata, body) = split(rest, b'\n');
        let mut fields = line.splitn(5, |&b| b == b'\t');
        let mut next = || {
            fields
                .next()
                .ok_or_else(|| Error::Request("short header".into()))
        };
        let conn = number(next()?)?;
        let call = number(next()?)?;
        let ms = number(next()?)?;
        if ms > crate::conn::MAX_SECONDS * 1000 {
            return Err(Error::Request(format!(
                "the call's timeout must be at most {} s (a year), got {ms} ms",
                crate::conn::MAX_SECONDS
            )));
        }
        let flags = text(next()?)?;
        let path = text(next()?)?;
        Ok(Head {
            conn,
            call,
            timeout: (ms > 0).then(|| Duration::from_millis(ms)),
            flags,
            path,
            metadata,
            body,
        })
    }
}

/// The request: the handle's metadata, then the call's; the deadline
/// (call's, else the handle's) as grpc-timeout.
pub fn request<T>(
    conn: &Conn,
    head: &Head<'_>,
    message: T,
) -> Result<(Request<T>, Option<Duration>), Error> {
    let mut req = Request::new(message);
    let md = req.metadata_mut();
    *md = conn.metadata.clone();
    crate::metadata::merge_json(md, head.metadata)?;
    let deadline = head.timeout.or(conn.timeout);
    if let Some(d) = deadline {
        req.set_timeout(d);
    }
    Ok((req, deadline))
}

pub fn path(p: &str) -> Result<PathAndQuery, Error> {
    PathAndQuery::try_from(p).map_err(|_| Error::UnknownMethod(p.to_string()))
}

/// What a call cancelled from Lua is answered with (nobody reads it: the
/// Lua side gave up already).
pub fn cancelled() -> Error {
    Error::Status(Status::cancelled(
        "the Lua side stopped waiting (its wait timed out or its request ended)",
    ))
}

pub fn deadline_exceeded(d: Duration) -> Error {
    Error::Status(Status::deadline_exceeded(format!(
        "no answer within the deadline of {:.3} s",
        d.as_secs_f64()
    )))
}

/// tonic reports its own enforcement of grpc-timeout as CANCELLED
/// "Timeout expired"; gRPC calls that DEADLINE_EXCEEDED, and so do we.
pub fn deadline_status(s: Status, deadline: Option<Duration>) -> Status {
    match deadline {
        Some(d) if s.code() == tonic::Code::Cancelled && s.message() == "Timeout expired" => {
            match deadline_exceeded(d) {
                Error::Status(s) => s,
                _ => s,
            }
        }
        _ => s,
    }
}

fn kind(m: &MethodDescriptor) -> &'static str {
    match (m.is_client_streaming(), m.is_server_streaming()) {
        (false, false) => "unary",
        (true, false) => "client-streaming",
        (false, true) => "server-streaming",
        (true, true) => "bidirectional-streaming",
    }
}

pub fn method(path: &str, unary: bool) -> Result<MethodDescriptor, Error> {
    let m = crate::protos::method(path)?;
    let is_unary = !m.is_client_streaming() && !m.is_server_streaming();
    if is_unary != unary {
        return Err(Error::WrongKind {
            path: path.to_string(),
            kind: kind(&m),
            with: if unary {
                "conn:new_stream"
            } else {
                "conn:unary"
            },
        });
    }
    Ok(m)
}

/// One unary call; the answer's bytes.
pub async fn unary(req: &[u8], task: TaskHandle) -> Result<Vec<u8>, Error> {
    let head = Head::parse(req)?;
    let m = method(head.path, true)?;
    let msg: DynamicMessage = codec::from_json(&m.input(), head.body)?;
    let conn = conn::get(head.conn)?;
    let (request, deadline) = request(&conn, &head, msg)?;
    let pq = path(head.path)?;
    let mut grpc = Grpc::new(conn.channel.clone());
    let call = async {
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(crate::error::chain(&e)))?;
        grpc.unary(request, pq, DynamicCodec::new(m.output())).await
    };
    let mut watch = crate::cancel::watch(head.call, Some(task));
    let timed = async {
        match deadline {
            Some(d) => tokio::time::timeout(d, call)
                .await
                .map_err(|_| deadline_exceeded(d))?,
            None => call.await,
        }
        .map_err(|s| Error::from(deadline_status(s, deadline)))
    };
    // cancelled: the call's future is dropped, which resets its HTTP/2 stream
    let res = tokio::select! {
        r = timed => r?,
        _ = watch.cancelled() => return Err(cancelled()),
    };
    let mut out = Vec::with_capacity(128);
    if head.flags.contains('m') {
        out = crate::metadata::to_json(res.metadata());
        out.push(b'\n');
    }
    codec::to_json(res.get_ref(), &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_parses_header_metadata_and_body() {
        let h = Head::parse(b"7\t9\t1500\tm\t/a.B/C\n{\"k\":\"v\"}\n{\"x\":1}").unwrap();
        assert_eq!((h.conn, h.call, h.flags, h.path), (7, 9, "m", "/a.B/C"));
        assert_eq!(h.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(h.metadata, br#"{"k":"v"}"#);
        assert_eq!(h.body, br#"{"x":1}"#);
        let h = Head::parse(b"1\t0\t0\t\t/a.B/C\n\n").unwrap();
        assert_eq!((h.timeout, h.metadata, h.body), (None, &b""[..], &b""[..]));
    }

    #[test]
    fn bad_headers_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"x\t1\t0\t\t/p\n\n",
            b"1\t1\t0",
            b"1\t1\t-5\t\t/p\n\n",
            b"1\t1\t1e+303\t\t/p\n\n",
            b"1\t1\t31536000001\t\t/p\n\n",
            b"1\t\t0\t\t/p\n\n",
        ] {
            assert!(
                Head::parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn tonic_timeouts_become_deadline_exceeded() {
        let d = Some(Duration::from_millis(200));
        let s = deadline_status(Status::cancelled("Timeout expired"), d);
        assert_eq!(s.code(), tonic::Code::DeadlineExceeded);
        let s = deadline_status(Status::cancelled("other"), d);
        assert_eq!(s.code(), tonic::Code::Cancelled);
        let s = deadline_status(Status::cancelled("Timeout expired"), None);
        assert_eq!(s.code(), tonic::Code::Cancelled);
    }
}
