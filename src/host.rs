//! This machine's name, as payloads, failure-log records and claims carry it, and
//! whether a process of it lives.

/// This machine's host name.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Whether process `pid` of this machine lives (EPERM: it does, as another
/// user's). A process gone and not yet reaped counts as living.
#[allow(unsafe_code)]
pub(crate) fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 is never delivered; kill(2) only checks that the process
    // exists and may be signalled, and reads nothing of ours.
    let sent = unsafe { libc::kill(pid, 0) };
    sent == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
