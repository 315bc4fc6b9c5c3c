//! Who may open an app: share levels, users signed in by token, and browser sessions.
//!
//! A port's share level is owner (the default), authenticated (any signed-in user) or public
//! (anyone with the URL); a template's maximum caps what owners may set. [`decide`] turns a
//! level, the owner and the viewer into allow, sign in, or not found. Browser sessions are kept
//! in SQLite by [`crate::sessions`].

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::User;
use crate::host::Name;

/// Who may open a port's app.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize, ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum ShareLevel {
    /// Only the workspace's owner.
    #[default]
    Owner,
    /// Any signed-in user of the deployment.
    Authenticated,
    /// Anyone with the URL.
    Public,
}

impl ShareLevel {
    /// The level's name as in the API and the config.
    pub fn as_str(self) -> &'static str {
        match self {
            ShareLevel::Owner => "owner",
            ShareLevel::Authenticated => "authenticated",
            ShareLevel::Public => "public",
        }
    }
}

impl fmt::Display for ShareLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ShareLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "owner" => Ok(ShareLevel::Owner),
            "authenticated" => Ok(ShareLevel::Authenticated),
            "public" => Ok(ShareLevel::Public),
            _ => Err(format!(
                "unknown share level `{s}`: use owner, authenticated or public"
            )),
        }
    }
}

/// What to do with a request for an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Proxy it.
    Allow,
    /// Nobody is signed in and the app is not public: send the browser to sign in.
    SignIn,
    /// The viewer may not see the app: answer as if it did not exist.
    NotFound,
}

/// Decides access to an app with `level` owned by `owner`, for `viewer` (if signed in).
pub fn decide(level: ShareLevel, owner: &Name, viewer: Option<&Name>) -> Access {
    match (level, viewer) {
        (ShareLevel::Public, _) => Access::Allow,
        (_, None) => Access::SignIn,
        (ShareLevel::Authenticated, Some(_)) => Access::Allow,
        (ShareLevel::Owner, Some(v)) if v == owner => Access::Allow,
        (ShareLevel::Owner, Some(_)) => Access::NotFound,
    }
}

/// Finds the user whose API token this is.
pub fn user_by_token<'a>(users: &'a HashMap<Name, User>, token: &str) -> Option<&'a User> {
    let hash: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
    users.values().find(|u| u.token_sha256 == hash)
}

/// The gateway's session cookie name; it is never forwarded to apps.
pub const SESSION_COOKIE: &str = "ferry_session";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_against_owner_other_user_and_no_session() {
        let alice = Name::parse("alice").unwrap();
        let bob = Name::parse("bob").unwrap();
        let table = [
            (ShareLevel::Owner, Some(&alice), Access::Allow),
            (ShareLevel::Owner, Some(&bob), Access::NotFound),
            (ShareLevel::Owner, None, Access::SignIn),
            (ShareLevel::Authenticated, Some(&alice), Access::Allow),
            (ShareLevel::Authenticated, Some(&bob), Access::Allow),
            (ShareLevel::Authenticated, None, Access::SignIn),
            (ShareLevel::Public, Some(&bob), Access::Allow),
            (ShareLevel::Public, None, Access::Allow),
        ];
        for (level, viewer, want) in table {
            assert_eq!(decide(level, &alice, viewer), want, "{level} {viewer:?}");
        }
    }

    #[test]
    fn levels_are_ordered_for_the_template_cap() {
        assert!(ShareLevel::Owner < ShareLevel::Authenticated);
        assert!(ShareLevel::Authenticated < ShareLevel::Public);
        assert_eq!("public".parse(), Ok(ShareLevel::Public));
        assert!("everyone".parse::<ShareLevel>().is_err());
    }
}
