//! Port shares, kept in SQLite so they survive a gateway restart.
//!
//! One row per (workspace, agent, port) with its level and upstream protocol. A port without a
//! row is shared at the owner level. Calls block briefly on a mutex and on SQLite; the database
//! is small and local, so they run on the async workers directly.

use std::path::Path;
use std::sync::Mutex;

use clap::ValueEnum;
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use crate::access::ShareLevel;

/// One port share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// The workspace's name.
    pub workspace: String,
    /// The agent's name.
    pub agent: String,
    /// The workspace port.
    pub port: u16,
    /// Who may open it.
    pub level: ShareLevel,
    /// The upstream's protocol.
    pub protocol: Protocol,
}

/// The protocol an app speaks on its port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Plain HTTP.
    #[default]
    Http,
    /// HTTPS (the app URL then carries the `s` suffix).
    Https,
}

/// The share table.
pub struct Store {
    db: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Connection::open(path)?;
        db.execute_batch(SCHEMA)?;
        Ok(Store { db: Mutex::new(db) })
    }

    /// The share of one port, if it has a row.
    pub fn share(
        &self,
        workspace: &str,
        agent: &str,
        port: u16,
    ) -> Result<Option<Share>, StoreError> {
        let db = self.db.lock().map_err(|_| StoreError::Poisoned)?;
        let mut stmt = db.prepare_cached(
            "SELECT level, protocol FROM shares WHERE workspace = ?1 AND agent = ?2 AND port = ?3",
        )?;
        let mut rows = stmt.query(params![workspace, agent, port])?;
        let Some(row) = rows.next()? else {
            return Ok(None);
        };
        let (level, protocol): (String, String) = (row.get(0)?, row.get(1)?);
        Ok(Some(to_share(workspace, agent, port, &level, &protocol)?))
    }

    /// Every share of a workspace, by agent and port.
    pub fn list(&self, workspace: &str) -> Result<Vec<Share>, StoreError> {
        let db = self.db.lock().map_err(|_| StoreError::Poisoned)?;
        let mut stmt = db.prepare_cached(
            "SELECT agent, port, level, protocol FROM shares WHERE workspace = ?1 \
             ORDER BY agent, port",
        )?;
        let rows = stmt.query_map(params![workspace], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, u16>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut shares = Vec::new();
        for row in rows {
            let (agent, port, level, protocol) = row?;
            shares.push(to_share(workspace, &agent, port, &level, &protocol)?);
        }
        Ok(shares)
    }

    /// Creates or replaces a share.
    pub fn put(&self, share: &Share) -> Result<(), StoreError> {
        let db = self.db.lock().map_err(|_| StoreError::Poisoned)?;
        db.execute(
            "INSERT INTO shares (workspace, agent, port, level, protocol) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (workspace, agent, port) DO UPDATE SET level = ?4, protocol = ?5",
            params![
                share.workspace,
                share.agent,
                share.port,
                share.level.as_str(),
                protocol_str(share.protocol)
            ],
        )?;
        Ok(())
    }

    /// Removes a share; returns whether there was one.
    pub fn delete(&self, workspace: &str, agent: &str, port: u16) -> Result<bool, StoreError> {
        let db = self.db.lock().map_err(|_| StoreError::Poisoned)?;
        let n = db.execute(
            "DELETE FROM shares WHERE workspace = ?1 AND agent = ?2 AND port = ?3",
            params![workspace, agent, port],
        )?;
        Ok(n > 0)
    }
}

/// Why the share table could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed (file unreadable, disk full, locked by another process).
    #[error("share database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A row holds a value this version does not know (written by a newer gateway?).
    #[error("share database: unknown value `{0}`")]
    BadValue(String),
    /// A thread panicked while holding the database.
    #[error("share database: a previous operation panicked")]
    Poisoned,
}

fn to_share(
    workspace: &str,
    agent: &str,
    port: u16,
    level: &str,
    protocol: &str,
) -> Result<Share, StoreError> {
    let level = level
        .parse()
        .map_err(|_| StoreError::BadValue(level.to_owned()))?;
    let protocol = match protocol {
        "http" => Protocol::Http,
        "https" => Protocol::Https,
        other => return Err(StoreError::BadValue(other.to_owned())),
    };
    Ok(Share {
        workspace: workspace.to_owned(),
        agent: agent.to_owned(),
        port,
        level,
        protocol,
    })
}

fn protocol_str(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "http",
        Protocol::Https => "https",
    }
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS shares (
    workspace TEXT NOT NULL,
    agent TEXT NOT NULL,
    port INTEGER NOT NULL,
    level TEXT NOT NULL,
    protocol TEXT NOT NULL,
    PRIMARY KEY (workspace, agent, port)
)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_survive_reopening_and_can_be_replaced_and_deleted() {
        let dir = std::env::temp_dir().join(format!("ferry-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("shares.sqlite");
        let share = Share {
            workspace: "ws".into(),
            agent: "main".into(),
            port: 8080,
            level: ShareLevel::Public,
            protocol: Protocol::Https,
        };
        Store::open(&path).unwrap().put(&share).unwrap();

        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.share("ws", "main", 8080).unwrap(),
            Some(share.clone())
        );
        let owner_only = Share {
            level: ShareLevel::Owner,
            ..share
        };
        store.put(&owner_only).unwrap();
        assert_eq!(store.list("ws").unwrap(), vec![owner_only]);
        assert!(store.delete("ws", "main", 8080).unwrap());
        assert!(!store.delete("ws", "main", 8080).unwrap());
        assert!(store.share("ws", "main", 8080).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
