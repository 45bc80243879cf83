//! User and group lookups and the privilege drop (`--user`): the only module that
//! may call into libc unsafely, each call with its SAFETY reasoning.
#![allow(unsafe_code)]

use crate::error::{Error, Result};
use std::ffi::CString;

/// A resolved `USER[:GROUP]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner {
    /// User id.
    pub(crate) uid: u32,
    /// Group id: the named group, else the user's primary group.
    pub(crate) gid: u32,
}

/// The effective user id of this process.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The name of the effective user, as libpq takes it for a URL without a user.
pub(crate) fn login_name() -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: a zeroed passwd is a valid value for getpwuid_r to overwrite.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: as in user_ids; pw_name points into buf, read before buf is dropped.
    let rc =
        unsafe { libc::getpwuid_r(euid(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: pw_name is a NUL-terminated string inside buf, which is still alive.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    name.to_str().ok().map(str::to_string)
}

/// Resolves `USER[:GROUP]` (names or numbers) through the system's user database.
pub(crate) fn resolve(spec: &str) -> Result<Owner> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, primary) = match user.parse::<u32>() {
        Ok(uid) => (uid, uid),
        Err(_) => user_ids(user).ok_or_else(|| Error::usage(format!("unknown user `{user}`")))?,
    };
    let gid = match group {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_id(g).ok_or_else(|| Error::usage(format!("unknown group `{g}`")))?,
        },
    };
    Ok(Owner { uid, gid })
}

fn user_ids(name: &str) -> Option<(u32, u32)> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: a zeroed passwd is a valid value for getpwnam_r to overwrite.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and buf's length is passed with it;
    // the strings pwd points to live in buf, which we do not read after it is dropped.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some((pwd.pw_uid, pwd.pw_gid))
}

fn group_id(name: &str) -> Option<u32> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: a zeroed group is a valid value for getgrnam_r to overwrite.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as in user_ids.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(grp.gr_gid)
}

/// Drops group and user privileges to `name` for good; refuses if root could be
/// regained. Called after the failure log is open and before the spool is touched.
/// `setting` is how messages name what asked for it: `--user` or `RAGSPOOL_USER`.
pub(crate) fn drop_to(name: &str, setting: &str) -> Result<()> {
    let Owner { uid, gid } = resolve(name)
        .map_err(|_| Error::config(format!("{setting} names unknown user `{name}`")))?;
    if euid() != 0 {
        if euid() == uid {
            return Ok(());
        }
        return Err(Error::config(format!(
            "{setting} is `{name}` but ragspool runs as uid {} without root to switch",
            euid()
        ))
        .with_note(format!(
            "start ragspool as root (sudo) to drop to `{name}`, or leave {setting} out"
        )));
    }
    let groups = [gid as libc::gid_t];
    // SAFETY: setgroups reads `groups.len()` gids from a valid array.
    let rc = unsafe { libc::setgroups(groups.len(), groups.as_ptr()) };
    if rc != 0 {
        return Err(last_os_error("setgroups"));
    }
    // SAFETY: setgid and setuid take plain integers; group first, while still root.
    if unsafe { libc::setgid(gid) } != 0 {
        return Err(last_os_error("setgid"));
    }
    // SAFETY: as above.
    if unsafe { libc::setuid(uid) } != 0 {
        return Err(last_os_error("setuid"));
    }
    // SAFETY: as above; this must fail now that root is given up.
    if uid != 0 && unsafe { libc::setuid(0) } == 0 {
        return Err(Error::config(
            "privilege drop did not stick: setuid(0) succeeded",
        ));
    }
    log::debug!("dropped privileges to {name} (uid {uid}, gid {gid})");
    Ok(())
}

fn last_os_error(call: &str) -> Error {
    Error::config(format!(
        "cannot drop privileges: {call}: {}",
        std::io::Error::last_os_error()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_resolves_by_name_and_number() {
        assert_eq!(resolve("root").ok(), Some(Owner { uid: 0, gid: 0 }));
        assert_eq!(resolve("0:0").ok(), Some(Owner { uid: 0, gid: 0 }));
        assert!(resolve("no-such-user-xyz").is_err());
    }
}
