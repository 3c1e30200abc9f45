//! Streaming calls (server, client and bidirectional: one mechanism).
//!
//! `new_stream` starts the call in a task of its own (the pump): the
//! request side is a channel `send` feeds and `close_send` closes; the
//! pump forwards each response message, then the final status, into a
//! bounded channel, which [`messages`] hands to Lua as one streamed answer
//! (a chunk per message), so the core's stream window bounds it and the
//! core tells when the reader is gone.
//!
//! Guarantees: `send` waits while 16 messages are in flight (back
//! pressure); `close` (also from Lua's GC, any phase: it never blocks)
//! drops the stream from the registry and aborts the pump, which cancels
//! the HTTP/2 stream; the messages task then ends. A `send` or messages
//! task whose caller stopped waiting (the core marks it cancelled: a wait
//! timed out, the stream was closed or collected, the worker exits) ends
//! at once and closes the stream too, so the server sees the RPC cancelled
//! without waiting for Lua's `close`. A stream's
//! id is the call id Lua sent with `new_stream`, so a cancel (cancel.rs)
//! closes it, even one that arrives before the stream was opened.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use prost_reflect::{DynamicMessage, MessageDescriptor};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::client::Grpc;
use tonic::Status;

use crate::abi::{Chunk, Task, TaskHandle};
use crate::call::{self, Head};
use crate::codec::{self, DynamicCodec};
use crate::conn;
use crate::error::Error;

const IN_FLIGHT: usize = 16;

type Incoming = mpsc::Receiver<Result<DynamicMessage, Status>>;

struct Stream {
    input: MessageDescriptor,
    tx: Mutex<Option<mpsc::Sender<DynamicMessage>>>,
    rx: tokio::sync::Mutex<Incoming>,
    pump: AbortHandle,
}

fn registry() -> &'static Mutex<HashMap<u64, Arc<Stream>>> {
    static R: OnceLock<Mutex<HashMap<u64, Arc<Stream>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

fn lock() -> std::sync::MutexGuard<'static, HashMap<u64, Arc<Stream>>> {
    registry().lock().unwrap_or_else(|e| e.into_inner())
}

fn get(id: u64) -> Result<Arc<Stream>, Error> {
    lock().get(&id).cloned().ok_or(Error::NoStream(id))
}

/// Starts a streaming call; returns the stream's id.
pub fn open(req: &[u8]) -> Result<u64, Error> {
    let head = Head::parse(req)?;
    let m = call::method(head.path, false)?;
    let conn = conn::get(head.conn)?;
    let (out_tx, out_rx) = mpsc::channel::<DynamicMessage>(IN_FLIGHT);
    let (in_tx, in_rx) = mpsc::channel(IN_FLIGHT);
    let (request, deadline) = call::request(&conn, &head, ReceiverStream::new(out_rx))?;
    let pq = call::path(head.path)?;
    let channel = conn.channel.clone();
    let output = m.output();
    let pump = tokio::spawn(async move {
        let feed = in_tx.clone();
        let run = async move {
            let mut grpc = Grpc::new(channel);
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(crate::error::chain(&e)))?;
            let mut body = grpc
                .streaming(request, pq, DynamicCodec::new(output))
                .await?
                .into_inner();
            while let Some(msg) = body.message().await? {
                if feed.send(Ok(msg)).await.is_err() {
                    break;
                }
            }
            Ok::<(), Status>(())
        };
        let result = match deadline {
            Some(d) => match tokio::time::timeout(d, run).await {
                Ok(r) => r,
                Err(_) => Err(match call::deadline_exceeded(d) {
                    Error::Status(s) => s,
                    _ => Status::deadline_exceeded("deadline exceeded"),
                }),
            },
            None => run.await,
        };
        if let Err(status) = result {
            let _ = in_tx
                .send(Err(call::deadline_status(status, deadline)))
                .await;
        }
    });
    let id = match head.call {
        0 => crate::cancel::new_id(),
        id => id,
    };
    let stream = Arc::new(Stream {
        input: m.input(),
        tx: Mutex::new(Some(out_tx)),
        rx: tokio::sync::Mutex::new(in_rx),
        pump: pump.abort_handle(),
    });
    let opened = crate::cancel::unless_cancelled(id, || match lock().entry(id) {
        Entry::Vacant(e) => {
            e.insert(stream);
            true
        }
        Entry::Occupied(_) => false,
    });
    match opened {
        Some(true) => Ok(id),
        Some(false) => {
            pump.abort();
            Err(Error::Request(format!("stream id {id} is in use")))
        }
        None => {
            pump.abort();
            Err(call::cancelled())
        }
    }
}

/// Runs `op` (a send or recv task of stream `id`) until it is done or the
/// core says its caller stopped waiting; then the stream is closed (the
/// RPC cancelled: nobody reads it any more) and the task ends at once.
async fn unless_gone<T>(
    id: u64,
    task: TaskHandle,
    op: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let mut watch = crate::cancel::watch(crate::cancel::new_id(), Some(task));
    tokio::select! {
        r = op => r,
        _ = watch.cancelled() => {
            close(id);
            Err(call::cancelled())
        }
    }
}

/// Sends one message (`W<id>\n<json>`).
pub async fn send(req: &[u8], task: TaskHandle) -> Result<(), Error> {
    let (id, json) = id_and_rest(req)?;
    let s = get(id)?;
    let msg = codec::from_json(&s.input, json)?;
    let tx =
        s.tx.lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(Error::SendClosed(id))?;
    unless_gone(id, task, async move {
        tx.send(msg).await.map_err(|_| Error::SendClosed(id))
    })
    .await
}

/// Streams every response message of stream `id` as one chunk each
/// (`M<id>`, posted by Lua's `rt:__stream`), then ends the task: rc 0 at
/// a clean end, the status at a failed one. The reader's window bounds
/// what waits in the core; when the reader goes away (closed, timed out,
/// its request gone, the worker exiting) the stream is closed, which
/// cancels the RPC, and the task ends.
pub async fn messages(task: Task) {
    let done = pump_messages(&task).await;
    match done {
        Ok(()) => task.respond(0, None),
        Err(e) => task.respond(e.rc(), Some(&e.body())),
    }
}

async fn pump_messages(task: &Task) -> Result<(), Error> {
    let req = task.request();
    let (id, _) = id_and_rest(req.get(1..).unwrap_or_default())?;
    let s = get(id)?;
    let mut rx = s.rx.lock().await;
    let mut watch = crate::cancel::watch(crate::cancel::new_id(), Some(task.handle()));
    let mut out = Vec::with_capacity(128);
    loop {
        let next = tokio::select! {
            m = rx.recv() => m,
            _ = watch.cancelled() => {
                close(id);
                return Err(call::cancelled());
            }
        };
        let msg = match next {
            Some(Ok(msg)) => msg,
            Some(Err(status)) => return Err(status.into()),
            None if lock().contains_key(&id) => return Ok(()),
            None => return Err(Error::NoStream(id)),
        };
        out.clear();
        codec::to_json(&msg, &mut out)?;
        loop {
            // registered before the offer, so room made after a Full is
            // never missed
            let room = crate::cancel::space().notified();
            match task.try_chunk(&out) {
                Chunk::Taken => break,
                Chunk::Gone => {
                    close(id);
                    return Err(call::cancelled());
                }
                Chunk::Full => tokio::select! {
                    _ = room => {}
                    _ = watch.cancelled() => {
                        close(id);
                        return Err(call::cancelled());
                    }
                },
            }
        }
    }
}

/// Ends the request side (`E<id>`).
pub fn close_send(req: &[u8]) -> Result<(), Error> {
    let (id, _) = id_and_rest(req)?;
    get(id)?.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
    Ok(())
}

/// Closes the stream: true if it was open. Never blocks.
pub fn close(id: u64) -> bool {
    match lock().remove(&id) {
        Some(s) => {
            s.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
            s.pump.abort();
            true
        }
        None => false,
    }
}

fn id_and_rest(req: &[u8]) -> Result<(u64, &[u8]), Error> {
    let (id, rest) = match req.iter().position(|&b| b == b'\n') {
        Some(i) => (&req[..i], &req[i + 1..]),
        None => (req, &req[req.len()..]),
    };
    Ok((call::number(id)?, rest))
}

/// Open streams.
pub fn count() -> usize {
    lock().len()
}
