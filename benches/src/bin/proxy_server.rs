//! The proxy-model baseline: a tokio side process behind a unix socket.
//!
//! This is how nginx users reach code in another language today: a side
//! process listens on a unix socket, and Lua talks to it with cosockets and
//! a keepalive pool. The benches compare every runtime against it.
//!
//! Two protocols, one per listening socket, both framed by a 4-byte
//! big-endian length:
//!
//! - `raw`: the frame's bytes are echoed back in a frame of their own;
//! - `msgpack`: the frame holds a MessagePack array `[cmd, arg]` in the shape
//!   of a classic OpenResty RPC design. `["PING"]` answers `[0, "PONG"]`,
//!   `["DELAY", ms]` answers `[0, ms]` after `ms` milliseconds without
//!   blocking other clients, `["ECHO", bin]` answers `[0, bin]`; anything
//!   else answers `[1, "unknown command"]`. `["STREAM", n, size]` answers
//!   with a stream instead: `n` raw frames of `size` bytes, then an empty
//!   frame (how the proxy model streams: framing by hand on a held-open
//!   connection).
//!
//! Usage: `bench-proxy-server --raw PATH --msgpack PATH [--threads N]`.
//! The sockets are made world-writable (nginx workers run as `nobody`).
//! The server runs until SIGTERM or SIGINT, then removes its socket files.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};

/// Largest frame accepted: bigger lengths mean a broken client.
const MAX_FRAME: usize = 64 << 20;

#[derive(Clone, Copy, Debug)]
enum Protocol {
    Raw,
    Msgpack,
}

struct Args {
    raw: Option<PathBuf>,
    msgpack: Option<PathBuf>,
    threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        raw: None,
        msgpack: None,
        threads: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--raw" => args.raw = Some(value.into()),
            "--msgpack" => args.msgpack = Some(value.into()),
            "--threads" => {
                args.threads = value
                    .parse()
                    .map_err(|_| format!("bad --threads {value}"))?
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if args.raw.is_none() && args.msgpack.is_none() {
        return Err("give --raw PATH and/or --msgpack PATH".into());
    }
    Ok(args)
}

fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))?;
    Ok(listener)
}

/// Answers one MessagePack request.
async fn answer(req: &[u8]) -> rmpv::Value {
    use rmpv::Value;
    let fail = |msg: &str| Value::Array(vec![Value::from(1), Value::from(msg)]);
    let Ok(Value::Array(parts)) = rmpv::decode::read_value(&mut &req[..]) else {
        return fail("request is not a MessagePack array");
    };
    let cmd = parts.first().and_then(Value::as_str).unwrap_or("");
    match cmd {
        "PING" => Value::Array(vec![Value::from(0), Value::from("PONG")]),
        "DELAY" => {
            let ms = parts
                .get(1)
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .min(60_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Value::Array(vec![Value::from(0), Value::from(ms)])
        }
        "ECHO" => {
            let data = parts.into_iter().nth(1).unwrap_or(Value::Nil);
            Value::Array(vec![Value::from(0), data])
        }
        _ => fail("unknown command"),
    }
}

/// `["STREAM", n, size]`: how many frames of what size to stream.
fn stream_request(proto: Protocol, req: &[u8]) -> Option<(u64, usize)> {
    use rmpv::Value;
    if !matches!(proto, Protocol::Msgpack) {
        return None;
    }
    let Ok(Value::Array(parts)) = rmpv::decode::read_value(&mut &req[..]) else {
        return None;
    };
    if parts.first().and_then(Value::as_str) != Some("STREAM") {
        return None;
    }
    let n = parts.get(1).and_then(Value::as_u64)?.min(10_000_000);
    let size = parts.get(2).and_then(Value::as_u64)?.clamp(1, 16 << 20) as usize;
    Some((n, size))
}

async fn serve(stream: UnixStream, proto: Protocol) -> std::io::Result<()> {
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 << 10, rd);
    let mut wr = BufWriter::with_capacity(64 << 10, wr);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    loop {
        let len = match rd.read_u32().await {
            Ok(n) => n as usize,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        if len > MAX_FRAME {
            return Err(std::io::Error::other(format!("frame of {len} bytes")));
        }
        buf.resize(len, 0);
        rd.read_exact(&mut buf).await?;
        if let Some((n, size)) = stream_request(proto, &buf) {
            let chunk = vec![b's'; size];
            for _ in 0..n {
                wr.write_u32(size as u32).await?;
                wr.write_all(&chunk).await?;
            }
            wr.write_u32(0).await?;
            wr.flush().await?;
            continue;
        }
        let body: &[u8] = match proto {
            Protocol::Raw => &buf,
            Protocol::Msgpack => {
                out.clear();
                rmpv::encode::write_value(&mut out, &answer(&buf).await)
                    .map_err(std::io::Error::other)?;
                &out
            }
        };
        wr.write_u32(body.len() as u32).await?;
        wr.write_all(body).await?;
        wr.flush().await?;
    }
}

async fn accept_loop(listener: UnixListener, proto: Protocol) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(async move {
                    if let Err(e) = serve(stream, proto).await {
                        eprintln!("bench-proxy-server: {proto:?} connection: {e}");
                    }
                });
            }
            Err(e) => {
                eprintln!("bench-proxy-server: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn run(args: &Args) -> std::io::Result<()> {
    for (path, proto) in [
        (&args.raw, Protocol::Raw),
        (&args.msgpack, Protocol::Msgpack),
    ] {
        if let Some(path) = path {
            tokio::spawn(accept_loop(bind(path)?, proto));
        }
    }
    println!("ready");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-proxy-server: {e}");
            std::process::exit(2);
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if args.threads > 0 {
        builder.worker_threads(args.threads);
    }
    let rt = builder.enable_all().build().expect("tokio runtime");
    let result = rt.block_on(run(&args));
    for path in [&args.raw, &args.msgpack].into_iter().flatten() {
        let _ = std::fs::remove_file(path);
    }
    if let Err(e) = result {
        eprintln!("bench-proxy-server: {e}");
        std::process::exit(1);
    }
}
