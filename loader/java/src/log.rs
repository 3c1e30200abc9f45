//! Lines for nginx's error.log.
//!
//! nginx points a worker's stderr at its error_log file, so the loader and
//! Java code write there directly, in nginx's own line format
//! (`2024/05/01 12:00:00 [error] 123#124: ffi_java: ...`), which keeps
//! the lines where an operator already looks and greppable the same way.

/// One error.log line (no trailing newline) at `level` for this thread.
pub fn line(level: &str, msg: &str) -> String {
    format!(
        "{} [{level}] {}#{}: {msg}",
        now(),
        std::process::id(),
        // SAFETY: gettid has no preconditions.
        unsafe { libc::gettid() }
    )
}

fn now() -> String {
    let mut buf = [0u8; 32];
    // SAFETY: time/localtime_r/strftime write only into the locals given,
    // and strftime NUL-terminates within the buffer size it is told.
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
    #[test]
    fn lines_look_like_nginx_error_log_lines() {
        let l = super::line("error", "ffi_java: x");
        let (date, rest) = l.split_at(19);
        assert_eq!(date.len(), 19);
        assert_eq!(&date[4..5], "/");
        assert!(rest.starts_with(" [error] "), "{l}");
        assert!(rest.ends_with(": ffi_java: x"), "{l}");
    }
}
