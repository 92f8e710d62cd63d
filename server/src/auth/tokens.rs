//! Simple tokens (etcd: `server/auth/simple_token.go`): opaque strings mapped to a user in memory,
//! valid until idle for the TTL (each use extends them).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::distr::Alphanumeric;
use rand::Rng;

/// Letters before the `.<index>` suffix (etcd: `defaultSimpleTokenLength`).
const TOKEN_LETTERS: usize = 16;

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
