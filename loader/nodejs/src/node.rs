//! The one Node.js of a worker process, on a thread of its own.
//!
//! Created lazily by the first `libffi_init` (inside the nginx worker,
//! never in the master that forks), then kept for the life of the process:
//! Node cannot be started twice in one process, so a failed start is
//! remembered and reported to every later load.
//!
//! The thread ("node") blocks every signal before Node starts, so Node's
//! threads (V8's platform workers, libuv's pool, worker_threads) inherit a
//! full mask and nginx's signals keep reaching nginx's thread; Node itself
//! is told to install no signal handler, not to touch stdio, not to read
//! NODE_OPTIONS, not to change resource limits, and runs with no inspector
//! (see host/host.cc). Node's options come from `RESTY_FFI_NODE_OPTIONS`
//! (split on whitespace; nginx passes it with `env`); `--no-warnings` is
//! always there because the bootstrap logs warnings itself.
//!
//! `process.exit()` in the main thread ends the nginx worker (nginx's
//! master starts a new one): it is a process, as `System.exit` is in Java.
//! Its exit code is kept, except 2, which would tell nginx's master not to
//! start a new worker, and becomes 1.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::OnceLock;
use std::time::Duration;

use crate::{abi, binding, host, libnode, napi, Error};

/// The loader's bootstrap script (the main script of Node's environment).
const BOOTSTRAP: &str = include_str!("../js/bootstrap.js");

/// How long the first start may take before the load fails.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The running Node.
#[derive(Debug)]
pub struct Node {
    pub libnode: PathBuf,
}

static NODE: OnceLock<Result<Node, String>> = OnceLock::new();

/// The worker's Node, started on first use.
pub fn get() -> Result<&'static Node, Error> {
    NODE.get_or_init(start)
        .as_ref()
        .map_err(|e| Error::Node(e.clone()))
}

/// Node's arguments: the program name, `--no-warnings`, then
/// `RESTY_FFI_NODE_OPTIONS`.
pub fn args(user: Option<&str>) -> Vec<String> {
    let mut a = vec!["nginx".to_string(), "--no-warnings".to_string()];
    a.extend(user.unwrap_or("").split_whitespace().map(str::to_string));
    a
}

fn start() -> Result<Node, String> {
    abi::make_core_global()?;
    let (lib, path) = libnode::open()?;
    // SAFETY: lib is a live handle of libnode, never closed.
    unsafe { napi::load(lib) }.map_err(|e| format!("{}: {e}", path.display()))?;
    host::open().map_err(|e| format!("{}: {e}", path.display()))?;
    let args = args(std::env::var("RESTY_FFI_NODE_OPTIONS").ok().as_deref());
    let (tx, rx) = sync_channel::<Result<(), String>>(1);
    std::thread::Builder::new()
        .name("node".into())
        .stack_size(8 << 20)
        .spawn(move || run(args, tx))
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(Ok(())) => Ok(Node { libnode: path }),
        Ok(Err(e)) => Err(format!("{}: {e}", path.display())),
        Err(_) => Err(format!(
            "{}: Node did not start within {} s",
            path.display(),
            START_TIMEOUT.as_secs()
        )),
    }
}

/// The node thread: blocks every signal, runs Node until its loop ends.
fn run(args: Vec<String>, tx: SyncSender<Result<(), String>>) {
    // SAFETY: a full set, applied to this thread only; threads it starts
    // inherit it.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
    let c_args: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_str()).unwrap_or_default())
        .collect();
    let ptrs: Vec<*const c_char> = c_args.iter().map(|c| c.as_ptr()).collect();
    let bootstrap = CString::new(BOOTSTRAP).expect("bootstrap.js has no NUL");
    let ready = Box::into_raw(Box::new(tx)).cast::<c_void>();
    // SAFETY: every pointer is valid for the call (which lasts the life of
    // the loop); `ready` is taken back exactly once, by on_ready.
    let rc = unsafe {
        (host::get().run)(
            ptrs.as_ptr(),
            ptrs.len() as c_int,
            bootstrap.as_ptr(),
            binding::init,
            on_ready,
            ready,
            on_exit,
            2,
        )
    };
    abi::log(
        resty_ffi_loader::ERR,
        &format!("ffi_nodejs: Node's event loop ended (code {rc}); calls to Node runtimes of this worker wait in vain from now on"),
    );
}

/// # Safety
/// Called once by the C++ host with the `data` handed to it in `run` (a
/// leaked Box it takes back) and a NUL-terminated `msg` or NULL.
unsafe extern "C" fn on_ready(data: *mut c_void, ok: c_int, msg: *const c_char) {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: data is the Box made in `run`, taken back once here.
        let tx = unsafe { Box::from_raw(data.cast::<SyncSender<Result<(), String>>>()) };
        let msg = if msg.is_null() {
            String::new()
        } else {
            // SAFETY: the host passes a NUL-terminated message.
            unsafe { CStr::from_ptr(msg) }
                .to_string_lossy()
                .into_owned()
        };
        let _ = tx.send(if ok != 0 { Ok(()) } else { Err(msg) });
    });
}

/// `process.exit(code)` in Node's main thread: see the module doc.
///
/// # Safety
/// Called only by the C++ host's process-exit hook, with an int; it reads
/// no memory of the caller's.
unsafe extern "C" fn on_exit(code: c_int) {
    let code = if code == 2 { 1 } else { code };
    // The log queue's lines are written by this worker's dispatcher, which
    // is about to end with it: this line goes straight to stderr, which
    // nginx points at its error_log.
    let line = format!(
        "{} [alert] {}#0: ffi_nodejs: process.exit() called in Node: this nginx worker exits with code {code}, nginx's master starts a new one\n",
        now_text(),
        std::process::id()
    );
    // SAFETY: writes a local buffer to fd 2; _exit ends the process without
    // running destructors while Node's threads still run.
    unsafe {
        libc::write(2, line.as_ptr().cast(), line.len());
        libc::_exit(code);
    }
}

/// Local time as nginx writes it: `2024/05/01 12:00:00`.
fn now_text() -> String {
    let mut buf = [0u8; 32];
    // SAFETY: time/localtime_r/strftime write only into the locals given.
    let n = unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&t, &mut tm);
        libc::strftime(
            buf.as_mut_ptr().cast(),
            buf.len(),
            c"%Y/%m/%d %H:%M:%S".as_ptr(),
            &tm,
        )
    };
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::args;

    #[test]
    fn node_options_follow_the_loaders_own() {
        assert_eq!(args(None), ["nginx", "--no-warnings"]);
        assert_eq!(
            args(Some("  --max-old-space-size=64   --stack-size=2000 ")),
            [
                "nginx",
                "--no-warnings",
                "--max-old-space-size=64",
                "--stack-size=2000"
            ]
        );
    }
}
