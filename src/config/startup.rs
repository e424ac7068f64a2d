//! Start-up checks that need the machine, not just the settings: can this process write its
//! data directory?
//!
//! In: the data directory. Out: `Ok`, or a one-line [`ConfigError`] naming the setting, the path
//! and the user that needs write access.
//! Stays true: a missing directory is created (as `serve` would); nothing else is left behind
//! (the probe file is removed).

use std::path::Path;

use super::ConfigError;

/// Creates `dir` if missing, then creates and removes a file in it.
pub(super) fn check_data_dir(dir: &Path) -> Result<(), ConfigError> {
    let refuse = |what: &str, e: std::io::Error| {
        ConfigError::at(
            "data_dir",
            format!(
                "cannot {what} {} ({e}); {} needs write access to it",
                dir.display(),
                process_user()
            ),
        )
    };
    std::fs::create_dir_all(dir).map_err(|e| refuse("create", e))?;
    let probe = dir.join(format!(".relay-write-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)
        .map_err(|e| refuse("write in", e))?;
    std::fs::remove_file(&probe).map_err(|e| refuse("remove a file from", e))
}

/// Who this process is, as an operator would `chown` for: the effective uid, with its name when
/// the system says (Linux; elsewhere only a description).
pub(crate) fn process_user() -> String {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| effective_uid(&status));
    let Some(uid) = uid else {
        return "the user the relay runs as".to_owned();
    };
    let name = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| user_name(&passwd, uid));
    match name {
        Some(name) => format!("user {name} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// The effective uid from `/proc/self/status` (`Uid:` real, effective, saved, filesystem).
pub(crate) fn effective_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The name `/etc/passwd` gives `uid` (`name:x:uid:gid:…`).
pub(crate) fn user_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_owned())
    })
}
