//! systemd's notify protocol without an async runtime: datagrams to NOTIFY_SOCKET
//! (READY=1, STOPPING=1, WATCHDOG=1, STATUS=...), and the watchdog interval.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// A handle on NOTIFY_SOCKET; every call is a no-op when it is unset.
pub(crate) struct Notify {
    socket: Option<(UnixDatagram, String)>,
}

impl Notify {
    /// From the environment.
    pub(crate) fn from_env() -> Notify {
        let socket = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|p| !p.is_empty())
            .and_then(|path| UnixDatagram::unbound().ok().map(|s| (s, path)));
        Notify { socket }
    }

    /// Sends one message (`READY=1`, `STATUS=...`); failures are logged, not fatal.
    pub(crate) fn send(&self, message: &str) {
        let Some((socket, path)) = &self.socket else {
            return;
        };
        let sent = match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                    .and_then(|addr| socket.send_to_addr(message.as_bytes(), &addr))
            }
            None => socket.send_to(message.as_bytes(), path),
        };
        if let Err(e) = sent {
            log::debug!("sd_notify {message:?}: {e}");
        }
    }

    /// Half of WATCHDOG_USEC, when the watchdog is on (and meant for this process).
    pub(crate) fn watchdog_interval() -> Option<Duration> {
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        if let Some(pid) = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            && pid != std::process::id()
        {
            return None;
        }
        (usec > 0).then(|| Duration::from_micros(usec / 2))
    }
}
