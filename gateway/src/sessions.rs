//! Browser sign-in sessions, kept in the gateway's SQLite database so a restart keeps browsers
//! signed in.
//!
//! A session id is 32 random bytes from the OS, sent to the browser once, as 64 hex digits in
//! the session cookie. The database holds only its SHA-256, with the user and the expiry
//! time, so a copy of the database signs no one in. An expired session is refused and removed
//! when the next one starts; signing out removes it at once. The sessions table shares the
//! database file with the share table but has its own connection, so the two never wait on
//! each other's mutex (SQLite serialises the writes).

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand_core::{OsRng, RngCore};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::host::Name;
use crate::store::StoreError;

/// The sessions table.
pub struct Sessions {
    db: Mutex<Connection>,
    lifetime: Duration,
}

impl Sessions {
    /// Opens (creating if needed) the sessions table in the database at `path`; new sessions
    /// last `lifetime`.
    pub fn open(path: &Path, lifetime: Duration) -> Result<Sessions, StoreError> {
        let db = Connection::open(path)?;
        db.execute_batch(SCHEMA)?;
        Ok(Sessions {
            db: Mutex::new(db),
            lifetime,
        })
    }

    /// How long a new session lasts.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Starts a session for `user` and returns its id for the cookie. Expired sessions of
    /// anyone are removed on the way.
    pub fn start(&self, user: &Name) -> Result<String, StoreError> {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let now = now_ms();
        let expires =
            now.saturating_add(i64::try_from(self.lifetime.as_millis()).unwrap_or(i64::MAX));
        let db = self.db.lock().map_err(|_| StoreError::Poisoned)?;
        db.execute("DELETE FROM sessions WHERE expires_ms <= ?1", params![now])?;
        db.execute(
            "INSERT INTO sessions (id_sha256, user, expires_ms) VALUES (?1, ?2, ?3)",
            params![hash(&id), user.as_str(), expires],
        )?;
        Ok(id)
    }

    /// The user signed in with this session id, if it exists and has not expired.
    pub fn user(&self, id: &str) -> Result<Option<Name>, StoreError> {
        let db = self.db.lock().map_err(|_| StoreError::Poisoned)?;
        let mut stmt = db
            .prepare_cached("SELECT user FROM sessions WHERE id_sha256 = ?1 AND expires_ms > ?2")?;
        let user: Option<String> = stmt
            .query_row(params![hash(id), now_ms()], |r| r.get(0))
            .optional()?;
        // A name that no longer parses (edited by hand) signs no one in.
        Ok(user.and_then(|u| Name::parse(&u).ok()))
    }

    /// Ends a session (sign-out); returns whether it existed.
    pub fn end(&self, id: &str) -> Result<bool, StoreError> {
        let db = self.db.lock().map_err(|_| StoreError::Poisoned)?;
        let n = db.execute(
            "DELETE FROM sessions WHERE id_sha256 = ?1",
            params![hash(id)],
        )?;
        Ok(n > 0)
    }
}

fn hash(id: &str) -> Vec<u8> {
    Sha256::digest(id.as_bytes()).to_vec()
}

// Milliseconds since the Unix epoch; a clock before 1970 counts as 1970.
fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS sessions (
    id_sha256 BLOB PRIMARY KEY,
    user TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
)";

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ferry-sessions-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("db.sqlite")
    }

    #[test]
    fn sessions_survive_reopening_and_end_on_sign_out() {
        let p = path("reopen");
        let alice = Name::parse("alice").unwrap();
        let id = Sessions::open(&p, Duration::from_secs(60))
            .unwrap()
            .start(&alice)
            .unwrap();
        assert_eq!(id.len(), 64);

        let s = Sessions::open(&p, Duration::from_secs(60)).unwrap();
        assert_eq!(s.user(&id).unwrap(), Some(alice.clone()));
        assert_eq!(s.user("nope").unwrap(), None);
        assert_ne!(id, s.start(&alice).unwrap());
        assert!(s.end(&id).unwrap());
        assert!(!s.end(&id).unwrap());
        assert_eq!(s.user(&id).unwrap(), None);
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }

    #[test]
    fn the_database_holds_hashes_not_ids() {
        let p = path("hashes");
        let s = Sessions::open(&p, Duration::from_secs(60)).unwrap();
        let id = s.start(&Name::parse("alice").unwrap()).unwrap();
        let db = Connection::open(&p).unwrap();
        let stored: Vec<u8> = db
            .query_row("SELECT id_sha256 FROM sessions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, hash(&id));
        assert_ne!(stored, id.as_bytes());
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }

    #[test]
    fn expired_sessions_are_refused_and_swept() {
        let p = path("expiry");
        let s = Sessions::open(&p, Duration::from_millis(50)).unwrap();
        let alice = Name::parse("alice").unwrap();
        let old = s.start(&alice).unwrap();
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(s.user(&old).unwrap(), None);
        let _ = s.start(&alice).unwrap();
        let db = Connection::open(&p).unwrap();
        let rows: i64 = db
            .query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1, "the expired row was removed");
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }
}
