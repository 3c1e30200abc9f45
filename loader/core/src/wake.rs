//! The wake-up socket of a completion channel: a unix-domain socket private
//! to one worker process.
//!
//! The nginx side cannot wait on a futex or eventfd without blocking the
//! worker, but it can wait on a cosocket. So the core listens on a unix
//! socket in a fresh 0700 directory that the worker creates (workers run as
//! an unprivileged user, so it must be somewhere that user can write), the
//! dispatcher connects to it with a cosocket, the core accepts (waiting at
//! most a second), checks with SO_PEERCRED that the peer is this very
//! process, and removes the path and directory. From then on a runtime
//! thread writes one byte to say "look"; data never crosses the socket, it
//! moves through memory.
//!
//! When no such socket can be made (no writable TMPDIR, a path too long for
//! a unix socket) the Lua layer falls back to polling the channel.

use std::ffi::CString;

use crate::Error;

/// How long `accept` waits for the dispatcher's connection.
const ACCEPT_TIMEOUT_MS: i32 = 1000;

/// A listening socket and the path and directory it owns; dropping it
/// closes the socket and removes both.
pub struct Listener {
    fd: i32,
    dir: CString,
    path: CString,
}

fn errno_text(what: &str) -> Error {
    Error::Wake(format!("{what}: {}", std::io::Error::last_os_error()))
}

fn tmp_dir() -> String {
    std::env::var("TMPDIR")
        .ok()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "/tmp".into())
}

/// Starts listening in a fresh private directory under $TMPDIR.
pub fn listen() -> Result<Listener, Error> {
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
        let fd = libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        );
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
            return Err(Error::Wake(format!(
                "socket path too long for a unix socket ({} bytes, at most {}): {path} (set TMPDIR to a shorter folder)",
                bytes.len(),
                addr.sun_path.len() - 1
            )));
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
        Ok(Listener {
            fd,
            dir,
            path: cpath,
        })
    }
}

impl Listener {
    pub fn path(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// Accepts the dispatcher's connection, waiting at most a second, and
    /// checks it comes from this process. Returns the connected fd.
    pub fn accept(self) -> Result<i32, Error> {
        let mut pfd = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, ACCEPT_TIMEOUT_MS) };
        if ready == 0 {
            return Err(Error::Wake(format!(
                "nothing connected to {} within {} ms",
                self.path(),
                ACCEPT_TIMEOUT_MS
            )));
        }
        // SAFETY: syscalls on the listener fd we own; ucred is plain data of
        // the size we pass.
        unsafe {
            let conn = libc::accept4(
                self.fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            );
            if conn < 0 {
                return Err(errno_text("accept"));
            }
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
                return Err(Error::Wake(format!(
                    "peer is not this process (pid {}, ours {})",
                    cred.pid,
                    libc::getpid()
                )));
            }
            Ok(conn)
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // SAFETY: the listener's fd and paths are ours.
        unsafe {
            libc::close(self.fd);
            libc::unlink(self.path.as_ptr());
            libc::rmdir(self.dir.as_ptr());
        }
    }
}

/// Writes one wake byte to `fd` (-1: none). Never blocks: a full socket
/// buffer already holds unread wake bytes, which is all a wake needs.
/// Callers hold the channel's lock, under which the fd is also closed.
pub fn notify(fd: i32) {
    if fd >= 0 {
        // SAFETY: writing one byte from a static buffer to an fd the
        // channel owns and keeps open while its lock is held.
        unsafe {
            libc::write(fd, b"!".as_ptr().cast(), 1);
        }
    }
}

/// Closes a wake fd (-1: nothing).
pub fn close_fd(fd: i32) {
    if fd >= 0 {
        // SAFETY: the fd belongs to the channel that gave it up.
        unsafe { libc::close(fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_gives_up_within_a_bound_when_nothing_connects() {
        let listener = listen().expect("listen under $TMPDIR");
        let path = listener.path();
        let t0 = std::time::Instant::now();
        let err = listener.accept().expect_err("nothing connected");
        let took = t0.elapsed();
        assert!(err.to_string().contains("nothing connected"), "{err}");
        assert!(took < std::time::Duration::from_secs(3), "{took:?}");
        assert!(!std::path::Path::new(&path).exists(), "path removed");
    }

    #[test]
    fn accept_takes_a_connection_from_this_process() {
        let listener = listen().expect("listen under $TMPDIR");
        let _client = std::os::unix::net::UnixStream::connect(listener.path()).unwrap();
        let fd = listener.accept().expect("same process");
        close_fd(fd);
    }
}
