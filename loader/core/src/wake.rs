//! The wake-up channel: a unix-domain socket private to one worker process.
//!
//! The nginx side cannot wait on a futex or eventfd without blocking the
//! worker, but it can wait on a cosocket. So the core listens on a unix
//! socket in a fresh 0700 directory that the worker creates (workers run as
//! an unprivileged user, so it must be somewhere that user can write), the
//! dispatcher connects to it with a cosocket, the core accepts, checks with
//! SO_PEERCRED that the peer is this very process, and removes the path and
//! directory. From then on a runtime thread writes one byte to say "look";
//! data never crosses the socket, it moves through memory.

use std::ffi::CString;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;

use crate::Error;

/// Writable end (the accepted connection); -1 when there is none.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

struct Listener {
    fd: i32,
    dir: CString,
    path: CString,
}

static LISTENER: Mutex<Option<Listener>> = Mutex::new(None);

fn errno_text(what: &str) -> Error {
    Error::Wake(format!("{what}: {}", std::io::Error::last_os_error()))
}

fn tmp_dir() -> String {
    std::env::var("TMPDIR")
        .ok()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "/tmp".into())
}

/// Starts listening; returns the socket path for the dispatcher to connect
/// to. Closes any previous channel (a restarted dispatcher gets a new one).
pub fn listen() -> Result<String, Error> {
    close();
    let template = CString::new(format!("{}/resty-ffi-XXXXXX", tmp_dir()))
        .map_err(|_| Error::Wake("TMPDIR contains a NUL byte".into()))?;
    let mut template = template.into_bytes_with_nul();
    // SAFETY: template is a writable NUL-terminated buffer ending in XXXXXX.
    let dir = unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) };
    if dir.is_null() {
        return Err(errno_text(&format!(
            "cannot create a private directory under {} (set TMPDIR to a folder the nginx worker user can write)",
            tmp_dir()
        )));
    }
    template.pop();
    let dir = CString::new(template).expect("mkdtemp output has no NUL");
    let path = format!("{}/wake.sock", dir.to_str().unwrap_or_default());
    let cpath = CString::new(path.clone()).expect("path has no NUL");

    // SAFETY: plain socket syscalls on a fresh fd; sockaddr_un is zeroed
    // and filled within its size (checked just below).
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            libc::rmdir(dir.as_ptr());
            return Err(errno_text("socket"));
        }
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = cpath.as_bytes();
        if bytes.len() >= addr.sun_path.len() {
            libc::close(fd);
            libc::rmdir(dir.as_ptr());
            return Err(Error::Wake(format!("socket path too long: {path}")));
        }
        for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        if libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len) != 0
            || libc::listen(fd, 1) != 0
        {
            let e = errno_text(&format!("bind/listen {path}"));
            libc::close(fd);
            libc::unlink(cpath.as_ptr());
            libc::rmdir(dir.as_ptr());
            return Err(e);
        }
        *LISTENER.lock().unwrap_or_else(|e| e.into_inner()) = Some(Listener {
            fd,
            dir,
            path: cpath,
        });
    }
    Ok(path)
}

/// Accepts the dispatcher's connection, checks it comes from this process,
/// and removes the socket's path and directory.
pub fn accept() -> Result<(), Error> {
    let listener = LISTENER
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .ok_or_else(|| Error::Wake("accept without listen".into()))?;
    // SAFETY: syscalls on the listener fd we own; ucred is plain data of
    // the size we pass.
    unsafe {
        let conn = libc::accept4(
            listener.fd,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        );
        let result = if conn < 0 {
            Err(errno_text("accept"))
        } else {
            let mut cred: libc::ucred = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
            let ok = libc::getsockopt(
                conn,
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                &mut cred as *mut _ as *mut libc::c_void,
                &mut len,
            ) == 0;
            if !ok || cred.pid != libc::getpid() {
                libc::close(conn);
                Err(Error::Wake(format!(
                    "peer is not this process (pid {}, ours {})",
                    cred.pid,
                    libc::getpid()
                )))
            } else {
                install(conn);
                Ok(())
            }
        };
        libc::close(listener.fd);
        libc::unlink(listener.path.as_ptr());
        libc::rmdir(listener.dir.as_ptr());
        result
    }
}

/// Writes one wake byte. Never blocks: a full socket buffer already holds
/// unread wake bytes, which is all a wake needs.
pub fn notify() {
    let fd = WAKE_FD.load(Ordering::Acquire);
    if fd >= 0 {
        // SAFETY: writing one byte from a static buffer; a stale fd at worst
        // gets EBADF, which a wake may ignore.
        unsafe {
            libc::write(fd, b"!".as_ptr().cast(), 1);
        }
    }
}

/// Makes `conn` the wake fd. The fd number, once set, never changes and is
/// never closed: a runtime thread may be about to write to it, and a closed
/// number could be reused by nginx for a client connection. A new channel
/// (a restarted dispatcher) is moved onto the same number with dup2, which
/// replaces the old connection atomically.
fn install(conn: i32) {
    let current = WAKE_FD.load(Ordering::Acquire);
    if current < 0 {
        WAKE_FD.store(conn, Ordering::Release);
        return;
    }
    // SAFETY: both fds are ours; dup2 atomically repoints `current` (keeping close-on-exec).
    unsafe {
        libc::dup3(conn, current, libc::O_CLOEXEC);
        libc::close(conn);
    }
}

/// Drops a listener that was never accepted, with its path and directory.
pub fn close() {
    if let Some(l) = LISTENER.lock().unwrap_or_else(|e| e.into_inner()).take() {
        // SAFETY: the listener's fd and paths are ours.
        unsafe {
            libc::close(l.fd);
            libc::unlink(l.path.as_ptr());
            libc::rmdir(l.dir.as_ptr());
        }
    }
}
