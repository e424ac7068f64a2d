//! Read-only questions tools ask a store beside a running relay (`preview`).
//!
//! In: a [`SqliteStore`] (opened shared, usually). Out: answers read on the store's own reader
//! connection. Stays true: nothing here writes, so a running relay's queue is never touched.

use super::{remembered_email, SqliteStore, StoreError};

impl SqliteStore {
    /// The email last seen with `user_id`, which an Identify without one would take.
    pub fn remembered_email(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        remembered_email(&reader, user_id)
    }
}
