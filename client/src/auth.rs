//! The Auth service: enabling auth, users, roles and permissions (`etcdctl auth/user/role`).
//!
//! Authenticating is not done here: give [`ConnectOptions::with_user`](crate::ConnectOptions::with_user)
//! and the client fetches and refreshes its token itself.

use std::sync::Arc;

use cairn_proto::authpb::permission::Type as PermissionType;
use cairn_proto::authpb::{Permission, UserAddOptions};
use cairn_proto::etcdserverpb::auth_client::AuthClient;
use cairn_proto::etcdserverpb::{
    AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleDeleteRequest,
    AuthRoleGetRequest, AuthRoleGrantPermissionRequest, AuthRoleListRequest,
    AuthRoleRevokePermissionRequest, AuthStatusRequest, AuthStatusResponse, AuthUserAddRequest,
    AuthUserChangePasswordRequest, AuthUserDeleteRequest, AuthUserGetRequest,
    AuthUserGrantRoleRequest, AuthUserListRequest, AuthUserRevokeRoleRequest,
};
use tonic::transport::Channel;

use crate::error::Result;
use crate::transport::{Pool, Retry};

/// What a role may do on a key range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Range and watch.
    Read,
    /// Put, delete, txn writes.
    Write,
    /// Both.
    ReadWrite,
}

/// The Auth service. Get one with [`Client::auth`](crate::Client::auth).
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use cairn_client::Access;
/// let auth = client.auth();
/// auth.user_add("root", "secret").await?;
/// auth.user_grant_role("root", "root").await?;
/// auth.role_add("app").await?;
/// auth.role_grant_permission("app", Access::ReadWrite, "app/", Some(cairn_client::prefix_end(b"app/"))).await?;
/// auth.enable().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Auth {
    pub(crate) pool: Arc<Pool>,
}

fn auth_client(ch: Channel) -> AuthClient<Channel> {
    AuthClient::new(ch)
}

impl Auth {
    /// Turns authentication on (the `root` user with the `root` role must exist).
    pub async fn enable(&self) -> Result<()> {
        self.pool
            .unary(
                Retry::IfNotExecuted,
                AuthEnableRequest {},
                |ch, r| async move { auth_client(ch).auth_enable(r).await },
            )
            .await
            .map(drop)
    }

    /// Turns authentication off (needs the root user's token).
    pub async fn disable(&self) -> Result<()> {
        self.pool
            .unary(
                Retry::IfNotExecuted,
                AuthDisableRequest {},
                |ch, r| async move { auth_client(ch).auth_disable(r).await },
            )
            .await
            .map(drop)
    }

    /// Whether authentication is on, and the auth revision (etcd ≥ 3.5).
    pub async fn status(&self) -> Result<AuthStatusResponse> {
        self.pool
            .unary(
                Retry::Idempotent,
                AuthStatusRequest {},
                |ch, r| async move { auth_client(ch).auth_status(r).await },
            )
            .await
    }

    /// Adds a user with a password.
    pub async fn user_add(
        &self,
        name: impl Into<String>,
        password: impl Into<String>,
    ) -> Result<()> {
        let req = AuthUserAddRequest {
            name: name.into(),
            password: password.into(),
            options: Some(UserAddOptions { no_password: false }),
            hashed_password: String::new(),
        };
        self.pool
            .unary(Retry::IfNotExecuted, req, |ch, r| async move {
                auth_client(ch).user_add(r).await
            })
            .await
            .map(drop)
    }

    /// Deletes a user.
    pub async fn user_delete(&self, name: impl Into<String>) -> Result<()> {
        let req = AuthUserDeleteRequest { name: name.into() };
        self.pool
            .unary(Retry::IfNotExecuted, req, |ch, r| async move {
                auth_client(ch).user_delete(r).await
            })
            .await
            .map(drop)
    }

    /// Changes a user's password.
    pub async fn user_change_password(
        &self,
        name: impl Into<String>,
        password: impl Into<String>,
    ) -> Result<()> {
        let req = AuthUserChangePasswordRequest {
            name: name.into(),
            password: password.into(),
            hashed_password: String::new(),
        };
        self.pool
            .unary(Retry::IfNotExecuted, req, |ch, r| async move {
                auth_client(ch).user_change_password(r).await
            })
            .await
            .map(drop)
    }

    /// Grants `role` to `user`.
    pub async fn user_grant_role(
        &self,
        user: impl Into<String>,
        role: impl Into<String>,
    ) -> Result<()> {
        let req = AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        };
        self.pool
            .unary(Retry::IfNotExecuted, req, |ch, r| async move {
                auth_client(ch).user_grant_role(r).await
            })
            .await
            .map(drop)
    }

    /// Revokes `role` from `user`.
    pub async fn user_revoke_role(
        &self,
        user: impl Into<String>,
        role: impl Into<String>,
    ) -> Result<()> {
        let req = AuthUserRevokeRoleRequest {
            name: user.into(),
            role: role.into(),
        };
        self.pool
            .unary(Retry::IfNotExecuted, req, |ch, r| async move {
                auth_client(ch).user_revoke_role(r).await
            })
            .await
            .map(drop)
    }

    /// A user's roles.
    pub async fn user_get(&self, name: impl Into<String>) -> Result<Vec<String>> {
        let req = AuthUserGetRequest { name: name.into() };
        let resp = self
            .pool
            .unary(Retry::Idempotent, req, |ch, r| async move {
                auth_client(ch).user_get(r).await
            })
            .await?;
        Ok(resp.roles)
    }

    /// Every user's name.
    pub async fn user_list(&self) -> Result<Vec<String>> {
        let resp = self
            .pool
            .unary(
                Retry::Idempotent,
                AuthUserListRequest {},
                |ch, r| async move { auth_client(ch).user_list(r).await },
            )
            .await?;
        Ok(resp.users)
    }

    /// Adds a role.
    pub async fn role_add(&self, name: impl Into<String>) -> Result<()> {
        let req = AuthRoleAddRequest { name: name.into() };
        self.pool
            .unary(Retry::IfNotExecuted, req, |ch, r| async move {
                auth_client(ch).role_add(r).await
            })
            .await
            .map(drop)
    }

    /// Deletes a role.
    pub async fn role_delete(&self, name: impl Into<String>) -> Result<()> {
        let req = AuthRoleDeleteRequest { role: name.into() };
        self.pool
            .unary(Retry::IfNotExecuted, req, |ch, r| async move {
                auth_client(ch).role_delete(r).await
            })
            .await
            .map(drop)
    }

    /// Lets `role` access `key` (with `range_end`: the keys from `key` up to it, exclusive;
    /// `prefix_end(key)` for a prefix).
    pub async fn role_grant_permission(
        &self,
        role: impl Into<String>,
        access: Access,
        key: impl Into<Vec<u8>>,
        range_end: Option<Vec<u8>>,
    ) -> Result<()> {
        let perm_type = match access {
            Access::Read => PermissionType::Read,
            Access::Write => PermissionType::Write,
            Access::ReadWrite => PermissionType::Readwrite,
        };
        let req = AuthRoleGrantPermissionRequest {
            name: role.into(),
            perm: Some(Permission {
                perm_type: perm_type as i32,
                key: key.into().into(),
                range_end: range_end.unwrap_or_default().into(),
            }),
        };
        self.pool
            .unary(Retry::IfNotExecuted, req, |ch, r| async move {
                auth_client(ch).role_grant_permission(r).await
            })
            .await
            .map(drop)
    }

    /// Takes back a permission given with [`Auth::role_grant_permission`].
    pub async fn role_revoke_permission(
        &self,
        role: impl Into<String>,
        key: impl Into<Vec<u8>>,
        range_end: Option<Vec<u8>>,
    ) -> Result<()> {
        let req = AuthRoleRevokePermissionRequest {
            role: role.into(),
            key: key.into().into(),
            range_end: range_end.unwrap_or_default().into(),
        };
        self.pool
            .unary(Retry::IfNotExecuted, req, |ch, r| async move {
                auth_client(ch).role_revoke_permission(r).await
            })
            .await
            .map(drop)
    }

    /// A role's permissions.
    pub async fn role_get(&self, name: impl Into<String>) -> Result<Vec<Permission>> {
        let req = AuthRoleGetRequest { role: name.into() };
        let resp = self
            .pool
            .unary(Retry::Idempotent, req, |ch, r| async move {
                auth_client(ch).role_get(r).await
            })
            .await?;
        Ok(resp.perm)
    }

    /// Every role's name.
    pub async fn role_list(&self) -> Result<Vec<String>> {
        let resp = self
            .pool
            .unary(
                Retry::Idempotent,
                AuthRoleListRequest {},
                |ch, r| async move { auth_client(ch).role_list(r).await },
            )
            .await?;
        Ok(resp.roles)
    }
}
