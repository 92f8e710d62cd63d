//! Authentication and role-based access control (etcd: `server/auth/store.go`).
//!
//! - [`AuthState`]: users (bcrypt password hashes, roles), roles (key-range permissions), the
//!   switch and its revision. Replicated: changed only by apply, stored in `meta` under `auth/`
//!   (so raft snapshots and backups carry it), published to the API on a `watch` channel.
//! - [`TokenProvider`]: simple tokens (`<16 letters>.<log index>`), member-local and in memory as
//!   in etcd, but assigned by apply on every member, so a token works on any member; idle ones
//!   expire after `--auth-token-ttl`. Or JWTs ([`jwt`]): signed by the member that takes the
//!   login, verified by any member with the public key, carrying the auth revision they were
//!   issued at.
//! - Permission checks run in the API before a request is proposed, against the applied state at
//!   some auth revision; the request carries that revision and apply refuses it if the auth state
//!   has changed since (`revision of auth store is old`), so a revoked permission takes effect at
//!   once on every member.
//!
//! User `root` with role `root` may do anything; other users what the union of their roles'
//! permissions covers (a range request needs the whole range covered).

mod check;
pub mod jwt;
mod tokens;

use std::collections::BTreeMap;

use bytes::Bytes;
use cairn_proto::authpb::{permission, Permission, Role, User};
use cairn_proto::cairnpb::auth_request::Request;
use prost::Message;

use crate::engine::{Batch, Cf, Engine, EngineError};
pub use tokens::{TokenProvider, Tokens};

const KEY_ENABLED: &[u8] = b"auth/enabled";
const KEY_REVISION: &[u8] = b"auth/revision";
const USER_PREFIX: &[u8] = b"auth/user/";
const ROLE_PREFIX: &[u8] = b"auth/role/";
pub const ROOT: &str = "root";

/// etcd's auth errors (`server/auth/store.go`), mapped to statuses in `api/error.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("user name is empty")]
    UserEmpty,
    #[error("role name is empty")]
    RoleEmpty,
    #[error("authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("invalid auth management")]
    InvalidAuthManagement,
    #[error("revision of auth store is old")]
    OldRevision,
    #[error("root user does not exist")]
    RootUserNotExist,
    #[error("root user does not have root role")]
    RootRoleNotExist,
    #[error("user name already exists")]
    UserExists,
    #[error("user name not found")]
    UserNotFound,
    #[error("role name already exists")]
    RoleExists,
    #[error("role name not found")]
    RoleNotFound,
    #[error("role is not granted to the user")]
    RoleNotGranted,
    #[error("permission is not granted to the role")]
    PermissionNotGranted,
    #[error("authentication is not enabled")]
    NotEnabled,
    #[error("permission denied")]
    PermissionDenied,
    #[error("invalid auth token")]
    InvalidAuthToken,
    /// A login on a member that has only the public key of `--auth-token jwt` (etcd's
    /// `ErrVerifyOnly`, answered with code Unknown).
    #[error("auth: token signing attempted with verify-only key")]
    VerifyOnly,
    /// What etcd's maintenance services answer a non-root user (`auth: permission denied`).
    #[error("auth: permission denied")]
    AdminOnly,
}

/// Who a request comes from, and the auth revision their permissions were checked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthInfo {
    pub user: String,
    pub revision: u64,
}

/// The kind of access a request needs on a key range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// The replicated auth state as of the applied index.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthState {
    pub enabled: bool,
    /// Grows by one with every change (etcd's auth revision; starts at 1 once anything changed).
    pub revision: u64,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
}

fn prefix_upper(prefix: &[u8]) -> Vec<u8> {
    let mut upper = prefix.to_vec();
    *upper.last_mut().expect("non-empty prefix") += 1;
    upper
}

fn load_records<T: Message + Default>(
    engine: &Engine,
    prefix: &[u8],
) -> Result<BTreeMap<String, T>, EngineError> {
    let mut out = BTreeMap::new();
    let upper = prefix_upper(prefix);
    let mut it = engine.iter(Cf::Meta, prefix, Some(&upper));
    while let Some((k, v)) = it.current() {
        let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        let record = T::decode(v).expect("stored auth records decode");
        out.insert(name, record);
        it.advance();
    }
    it.check()?;
    Ok(out)
}

fn record_key(prefix: &[u8], name: &str) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

/// The interval `[key, range_end)` a range names: a single key is `[key, key\0)`; an end of `\0`
/// means no upper bound (`None`).
fn interval(key: &[u8], range_end: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    if range_end.is_empty() {
        let mut end = key.to_vec();
        end.push(0);
        return (key.to_vec(), Some(end));
    }
    if range_end == [0] {
        return (key.to_vec(), None);
    }
    (key.to_vec(), Some(range_end.to_vec()))
}

/// Whether the union of `granted` intervals covers `wanted`.
fn covers(
    mut granted: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    wanted: (Vec<u8>, Option<Vec<u8>>),
) -> bool {
    granted.sort();
    let (mut from, to) = wanted;
    for (start, end) in granted {
        if start > from {
            return false;
        }
        match end {
            None => return true,
            Some(end) if end > from => {
                from = end;
                if to.as_ref().is_some_and(|t| from >= *t) {
                    return true;
                }
            }
            Some(_) => {}
        }
    }
    false
}

fn grants(perm: &Permission, access: Access) -> bool {
    matches!(
        (perm.perm_type(), access),
        (permission::Type::Readwrite, _)
            | (permission::Type::Read, Access::Read)
            | (permission::Type::Write, Access::Write)
    )
}

impl AuthState {
    pub fn load(engine: &Engine) -> Result<AuthState, EngineError> {
        let flag = |key| -> Result<u64, EngineError> {
            Ok(engine.get(Cf::Meta, key)?.map_or(0, |b| {
                u64::from_be_bytes(b.try_into().expect("8-byte auth value"))
            }))
        };
        Ok(AuthState {
            enabled: flag(KEY_ENABLED)? == 1,
            revision: flag(KEY_REVISION)?,
            users: load_records(engine, USER_PREFIX)?,
            roles: load_records(engine, ROLE_PREFIX)?,
        })
    }

    pub fn is_root(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == ROOT))
    }

    /// Whether `user` may access `[key, range_end)` (a single key when `range_end` is empty).
    pub fn permits(&self, user: &str, access: Access, key: &[u8], range_end: &[u8]) -> bool {
        let Some(u) = self.users.get(user) else {
            return false;
        };
        if u.roles.iter().any(|r| r == ROOT) {
            return true;
        }
        let granted = u
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| r.key_permission.iter())
            .filter(|p| grants(p, access))
            .map(|p| interval(&p.key, &p.range_end))
            .collect();
        covers(granted, interval(key, range_end))
    }

    /// Applies one change; on success writes it (and the new revision) through `batch`. An
    /// [`Authenticate`](Request::Authenticate) changes nothing here (its token is the caller's).
    pub fn apply(&mut self, req: &Request, batch: &mut Batch) -> Result<(), AuthError> {
        let mut users_changed = vec![];
        let mut roles_changed = vec![];
        match req {
            Request::Enable(_) => {
                if self.enabled {
                    return Ok(());
                }
                let root = self.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
                if !root.roles.iter().any(|r| r == ROOT) {
                    return Err(AuthError::RootRoleNotExist);
                }
                self.enabled = true;
            }
            Request::Disable(_) => {
                if !self.enabled {
                    return Ok(());
                }
                self.enabled = false;
            }
            Request::Authenticate(a) => {
                if !self.enabled {
                    return Err(AuthError::NotEnabled);
                }
                if !self.users.contains_key(&a.name) {
                    return Err(AuthError::AuthFailed);
                }
                return Ok(());
            }
            Request::UserAdd(r) => {
                if r.name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(&r.name) {
                    return Err(AuthError::UserExists);
                }
                let user = User {
                    name: Bytes::copy_from_slice(r.name.as_bytes()),
                    password: Bytes::copy_from_slice(r.hashed_password.as_bytes()),
                    roles: vec![],
                    options: r.options,
                };
                self.users.insert(r.name.clone(), user);
                users_changed.push(r.name.clone());
            }
            Request::UserDelete(r) => {
                if self.enabled && r.name == ROOT {
                    return Err(AuthError::InvalidAuthManagement);
                }
                self.users.remove(&r.name).ok_or(AuthError::UserNotFound)?;
                users_changed.push(r.name.clone());
            }
            Request::UserChangePassword(r) => {
                let user = self.users.get_mut(&r.name).ok_or(AuthError::UserNotFound)?;
                user.password = Bytes::copy_from_slice(r.hashed_password.as_bytes());
                users_changed.push(r.name.clone());
            }
            Request::UserGrantRole(r) => {
                if r.role != ROOT && !self.roles.contains_key(&r.role) {
                    let user_known = self.users.contains_key(&r.user);
                    return Err(if user_known {
                        AuthError::RoleNotFound
                    } else {
                        AuthError::UserNotFound
                    });
                }
                let user = self.users.get_mut(&r.user).ok_or(AuthError::UserNotFound)?;
                if !user.roles.contains(&r.role) {
                    user.roles.push(r.role.clone());
                    user.roles.sort();
                }
                users_changed.push(r.user.clone());
            }
            Request::UserRevokeRole(r) => {
                if self.enabled && r.name == ROOT && r.role == ROOT {
                    return Err(AuthError::InvalidAuthManagement);
                }
                let user = self.users.get_mut(&r.name).ok_or(AuthError::UserNotFound)?;
                let before = user.roles.len();
                user.roles.retain(|x| x != &r.role);
                if user.roles.len() == before {
                    return Err(AuthError::RoleNotGranted);
                }
                users_changed.push(r.name.clone());
            }
            Request::RoleAdd(r) => {
                if r.name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(&r.name) {
                    return Err(AuthError::RoleExists);
                }
                let role = Role {
                    name: Bytes::copy_from_slice(r.name.as_bytes()),
                    key_permission: vec![],
                };
                self.roles.insert(r.name.clone(), role);
                roles_changed.push(r.name.clone());
            }
            Request::RoleDelete(r) => {
                if self.enabled && r.role == ROOT {
                    return Err(AuthError::InvalidAuthManagement);
                }
                self.roles.remove(&r.role).ok_or(AuthError::RoleNotFound)?;
                roles_changed.push(r.role.clone());
                for (name, user) in self.users.iter_mut() {
                    let before = user.roles.len();
                    user.roles.retain(|x| x != &r.role);
                    if user.roles.len() != before {
                        users_changed.push(name.clone());
                    }
                }
            }
            Request::RoleGrantPermission(r) => {
                let role = self.roles.get_mut(&r.name).ok_or(AuthError::RoleNotFound)?;
                let perm = r.perm.clone().unwrap_or_default();
                // The same range granted again changes its type; the list stays sorted by key.
                match role
                    .key_permission
                    .iter_mut()
                    .find(|p| p.key == perm.key && p.range_end == perm.range_end)
                {
                    Some(p) => p.perm_type = perm.perm_type,
                    None => role.key_permission.push(perm),
                }
                role.key_permission
                    .sort_by(|a, b| (&a.key, &a.range_end).cmp(&(&b.key, &b.range_end)));
                roles_changed.push(r.name.clone());
            }
            Request::RoleRevokePermission(r) => {
                let role = self.roles.get_mut(&r.role).ok_or(AuthError::RoleNotFound)?;
                let before = role.key_permission.len();
                role.key_permission
                    .retain(|p| !(p.key == r.key && p.range_end == r.range_end));
                if role.key_permission.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
                roles_changed.push(r.role.clone());
            }
        }
        self.revision += 1;
        batch.put(Cf::Meta, KEY_REVISION, &self.revision.to_be_bytes());
        batch.put(
            Cf::Meta,
            KEY_ENABLED,
            &u64::from(self.enabled).to_be_bytes(),
        );
        for name in users_changed {
            let key = record_key(USER_PREFIX, &name);
            match self.users.get(&name) {
                Some(u) => batch.put(Cf::Meta, &key, &u.encode_to_vec()),
                None => batch.delete(Cf::Meta, &key),
            }
        }
        for name in roles_changed {
            let key = record_key(ROLE_PREFIX, &name);
            match self.roles.get(&name) {
                Some(r) => batch.put(Cf::Meta, &key, &r.encode_to_vec()),
                None => batch.delete(Cf::Meta, &key),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
