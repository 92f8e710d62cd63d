//! The token provider chosen by `--auth-token` (etcd: `server/auth/store.go`, `TokenProvider`):
//! simple tokens (etcd: `server/auth/simple_token.go`), opaque strings mapped to a user in memory
//! and valid until idle for the TTL (each use extends them), or JWTs ([`super::jwt`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rand::distr::Alphanumeric;
use rand::Rng;

use super::jwt::Jwt;
use super::AuthInfo;

/// Letters before the `.<index>` suffix (etcd: `defaultSimpleTokenLength`).
const TOKEN_LETTERS: usize = 16;

/// Where tokens come from and how they are read back.
///
/// A simple token is assigned by apply on every member (so each knows it) and carries nothing: its
/// caller is checked at the current auth revision. A JWT is signed by the member that takes the
/// login, without raft, and carries the auth revision it was issued at: once the auth state has
/// changed, requests that check permissions refuse it (`revision of auth store is old`) and the
/// client logs in again.
pub enum TokenProvider {
    Simple(Tokens),
    Jwt(Arc<Jwt>),
}

impl TokenProvider {
    /// Who `token` speaks for, and at which auth revision (simple tokens: `current_revision`).
    pub fn info(&self, token: &str, current_revision: u64) -> Option<AuthInfo> {
        match self {
            TokenProvider::Simple(tokens) => tokens.user(token).map(|user| AuthInfo {
                user,
                revision: current_revision,
            }),
            TokenProvider::Jwt(jwt) => jwt
                .info(token, SystemTime::now())
                .map(|(user, revision)| AuthInfo { user, revision }),
        }
    }

    /// Records a login applied on this member (simple tokens only; JWTs are not assigned by apply).
    pub fn assign(&self, token: String, user: &str) {
        if let TokenProvider::Simple(tokens) = self {
            tokens.assign(token, user);
        }
    }

    /// Drops every simple token of `user`; a JWT lives until it expires or the auth revision moves.
    pub fn invalidate_user(&self, user: &str) {
        if let TokenProvider::Simple(tokens) = self {
            tokens.invalidate_user(user);
        }
    }

    /// Drops every simple token (auth disabled).
    pub fn clear(&self) {
        if let TokenProvider::Simple(tokens) = self {
            tokens.clear();
        }
    }
}

pub struct Tokens {
    ttl: Duration,
    /// token → (user, expiry).
    live: Mutex<HashMap<String, (String, Instant)>>,
}

impl Tokens {
    pub fn new(ttl: Duration) -> Tokens {
        Tokens {
            ttl,
            live: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh random prefix; apply appends `.<log index>`.
    pub fn new_prefix() -> String {
        rand::rng()
            .sample_iter(Alphanumeric)
            .filter(|c| c.is_ascii_alphabetic())
            .take(TOKEN_LETTERS)
            .map(char::from)
            .collect()
    }

    pub fn assign(&self, token: String, user: &str) {
        let mut live = self.live.lock().expect("token lock");
        let now = Instant::now();
        live.retain(|_, (_, expiry)| *expiry > now);
        live.insert(token, (user.to_string(), now + self.ttl));
    }

    /// The user of a live `token` (and the token lives another TTL).
    pub fn user(&self, token: &str) -> Option<String> {
        let mut live = self.live.lock().expect("token lock");
        let now = Instant::now();
        let (user, expiry) = live.get_mut(token)?;
        if *expiry <= now {
            live.remove(token);
            return None;
        }
        *expiry = now + self.ttl;
        Some(user.clone())
    }

    /// Drops every token of `user` (deleted, or a new password).
    pub fn invalidate_user(&self, user: &str) {
        self.live
            .lock()
            .expect("token lock")
            .retain(|_, (u, _)| u != user);
    }

    /// Drops every token (auth disabled).
    pub fn clear(&self) {
        self.live.lock().expect("token lock").clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_expire_when_idle_and_can_be_invalidated() {
        let tokens = Tokens::new(Duration::from_millis(50));
        let prefix = Tokens::new_prefix();
        assert_eq!(prefix.len(), TOKEN_LETTERS);
        assert!(prefix.chars().all(|c| c.is_ascii_alphabetic()));
        tokens.assign(format!("{prefix}.7"), "alice");
        tokens.assign("other.8".into(), "bob");
        assert_eq!(
            tokens.user(&format!("{prefix}.7")).as_deref(),
            Some("alice")
        );
        tokens.invalidate_user("alice");
        assert_eq!(tokens.user(&format!("{prefix}.7")), None);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(tokens.user("other.8"), None);
    }
}
