//! What tools do with a store beside a running relay (`preview`), or instead of one
//! (`serve --sandbox` starting its disposable queue afresh).
//!
//! In: a [`SqliteStore`] or a data directory. Out: answers read on the store's reader
//! connection; a store's files removed.
//! Stays true: reading never writes, so a running relay's queue is never touched; a store is
//! removed only while this process holds the directory's lock, so never under a running relay.

use std::path::Path;

use super::{lock_dir, remembered_email, SqliteStore, StoreError};

/// The files of a store, besides its lock.
const STORE_FILES: &[&str] = &["relay.db", "relay.db-wal", "relay.db-shm"];

impl SqliteStore {
    /// The email last seen with `user_id`, which an Identify without one would take.
    pub fn remembered_email(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        remembered_email(&reader, user_id)
    }

    /// Removes the store in `dir` (queue, dedupe ids, remembered emails, dead letters), for a
    /// store that is disposable by design. Refused while a relay holds the directory; a
    /// directory without a store is left as it is.
    pub fn discard(dir: &Path) -> Result<(), StoreError> {
        let refused = |reason: String| StoreError::DataDir {
            path: dir.display().to_string(),
            reason,
        };
        if !dir.join(STORE_FILES[0]).exists() {
            return Ok(());
        }
        let _lock = lock_dir(dir).map_err(refused)?;
        for name in STORE_FILES {
            match std::fs::remove_file(dir.join(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(refused(format!("cannot remove {name}: {e}")))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

    /// A store is removed, not while a relay holds it; no store is nothing to do.
    #[test]
    fn discard_removes_only_an_unheld_store() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("sandbox");
        SqliteStore::discard(&dir).expect("no store: nothing to do");
        let held = SqliteStore::open(&dir, StoreOptions::default()).expect("open");
        let refused = SqliteStore::discard(&dir).expect_err("held by a relay");
        assert!(refused.to_string().contains("another relay"), "{refused}");
        assert!(dir.join("relay.db").exists());
        drop(held);
        // The writer thread releases the lock when it ends, shortly after the last handle.
        let released = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            SqliteStore::discard(&dir).is_ok()
        });
        assert!(released, "the store was never released");
        assert!(!dir.join("relay.db").exists());
    }
}
