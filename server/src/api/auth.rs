//! `etcdserverpb.Auth` and the caller checks every other service makes (see [`crate::auth`]).
//!
//! Passwords are hashed (bcrypt, `--bcrypt-cost`) and checked on the member that takes the
//! request, on a blocking thread; only hashes travel through raft. A login is replicated so that
//! every member knows its token.

use std::sync::Arc;
use std::time::SystemTime;

use cairn_proto::cairnpb::auth_request::Request as Auth;
use cairn_proto::cairnpb::internal_request::Request;
use cairn_proto::cairnpb::{AuthRequest, Authenticate};
use cairn_proto::etcdserverpb::auth_server;
use cairn_proto::etcdserverpb::*;
use tonic::metadata::MetadataMap;
use tonic::{Request as GrpcRequest, Response, Status};

use super::listener::ClientAddr;
use super::{ApiError, Core};
use crate::apply::Applied;
use crate::auth::{Access, AuthError, AuthInfo, AuthState, TokenProvider, Tokens, ROOT};

/// The metadata header that carries the common name of the client's verified certificate from
/// [`tls_identity`] to [`Credentials`]. Never taken from a client: [`tls_identity`] removes it from
/// every request first.
const COMMON_NAME_HEADER: &str = "cairn-tls-common-name";

/// What a request presents to say who calls: its `token` metadata, and the common name of the
/// client certificate its connection was verified with.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    token: Option<String>,
    common_name: Option<String>,
}

impl Credentials {
    pub fn from_metadata(metadata: &MetadataMap) -> Credentials {
        let text = |name: &str| {
            metadata
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Credentials {
            token: text("token"),
            common_name: text(COMMON_NAME_HEADER),
        }
    }
}

/// In front of the gRPC services: replaces whatever [`COMMON_NAME_HEADER`] a request carries with
/// the common name of its connection's verified client certificate, if any. The JSON gateway's
/// inner calls carry none (etcd ignores the common name of gateway requests too).
pub async fn tls_identity(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    req.headers_mut().remove(COMMON_NAME_HEADER);
    let name = req
        .extensions()
        .get::<axum::extract::ConnectInfo<ClientAddr>>()
        .and_then(|c| c.0.common_name.clone());
    if let Some(value) = name.and_then(|n| http::HeaderValue::from_str(&n).ok()) {
        req.headers_mut().insert(COMMON_NAME_HEADER, value);
    }
    next.run(req).await
}

impl Core {
    pub fn auth_state(&self) -> Arc<AuthState> {
        self.auth.borrow().clone()
    }

    /// Who calls, when auth is enabled: see [`Core::caller_with`].
    pub fn caller(&self, metadata: &MetadataMap) -> Result<Option<AuthInfo>, ApiError> {
        self.caller_with(&Credentials::from_metadata(metadata))
    }

    /// Who calls, when auth is enabled: the user of the token (unknown or expired: `invalid auth
    /// token`), else the common name of the client's verified certificate (`--client-cert-auth`;
    /// etcd: `AuthInfoFromTLS`), else nobody (`user name is empty`). `None` while auth is disabled.
    pub fn caller_with(&self, credentials: &Credentials) -> Result<Option<AuthInfo>, ApiError> {
        let state = self.auth_state();
        if !state.enabled {
            return Ok(None);
        }
        let info = match (&credentials.token, &credentials.common_name) {
            (Some(token), _) => self
                .tokens
                .info(token, state.revision)
                .ok_or(AuthError::InvalidAuthToken)?,
            (None, Some(name)) => AuthInfo {
                user: name.clone(),
                revision: state.revision,
            },
            (None, None) => return Err(AuthError::UserEmpty.into()),
        };
        Ok(Some(info))
    }

    /// Runs `check` on the current auth state for the caller (nothing to check without one). A
    /// caller whose token predates the current auth revision (a JWT) is refused with `revision of
    /// auth store is old` (etcd: `authStore.isOpPermitted`).
    pub fn permit(
        &self,
        caller: &Option<AuthInfo>,
        check: impl FnOnce(&AuthState, &str) -> Result<(), AuthError>,
    ) -> Result<(), ApiError> {
        let Some(c) = caller else {
            return Ok(());
        };
        let state = self.auth_state();
        if c.revision < state.revision {
            return Err(AuthError::OldRevision.into());
        }
        Ok(check(&state, &c.user)?)
    }

    /// `caller` may read and write every key under `prefix` (Lock and Election names).
    pub fn permit_prefix(&self, caller: &Option<AuthInfo>, prefix: &[u8]) -> Result<(), ApiError> {
        let end = crate::mvcc::codec::prefix_end(prefix);
        self.permit(caller, |s, user| {
            let all = s.permits(user, Access::Read, prefix, &end)
                && s.permits(user, Access::Write, prefix, &end);
            all.then_some(()).ok_or(AuthError::PermissionDenied)
        })
    }

    /// Only root passes: `error` for anyone else. Unlike [`Core::permit`], an old token revision
    /// passes here, as in etcd (`authStore.IsAdminPermitted`); admin changes are still refused
    /// by apply.
    pub fn permit_admin(
        &self,
        caller: &Option<AuthInfo>,
        error: AuthError,
    ) -> Result<(), ApiError> {
        match caller {
            Some(c) => Ok(self
                .auth_state()
                .is_root(&c.user)
                .then_some(())
                .ok_or(error)?),
            None => Ok(()),
        }
    }

    async fn auth_change(
        &self,
        caller: &Option<AuthInfo>,
        change: Auth,
    ) -> Result<Option<ResponseHeader>, ApiError> {
        let request = Request::Auth(AuthRequest {
            request: Some(change),
        });
        match self.propose_as(request, caller.as_ref()).await? {
            Applied::Auth { .. } => Ok(self.header(self.store.current_revision()?)),
            other => Err(ApiError::Internal(format!("apply answered with {other:?}"))),
        }
    }

    async fn hash_password(&self, password: String) -> Result<String, ApiError> {
        let cost = self.bcrypt_cost;
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(|e| ApiError::Internal(format!("hashing the password: {e}")))
    }
}

pub struct AuthService {
    core: Arc<Core>,
}

impl AuthService {
    pub fn new(core: Arc<Core>) -> AuthService {
        AuthService { core }
    }

    /// The response header at the current revision.
    fn header(&self) -> Result<Option<ResponseHeader>, ApiError> {
        Ok(self.core.header(self.core.store.current_revision()?))
    }

    /// The caller, who must be root (`permission denied` otherwise).
    fn admin<T>(&self, req: &GrpcRequest<T>) -> Result<Option<AuthInfo>, ApiError> {
        let caller = self.core.caller(req.metadata())?;
        self.core
            .permit_admin(&caller, AuthError::PermissionDenied)?;
        Ok(caller)
    }

    /// A simple-token login: proposed, so that apply assigns the token on every member.
    async fn login(&self, name: String) -> Result<String, ApiError> {
        let login = Auth::Authenticate(Authenticate {
            name,
            token_prefix: Tokens::new_prefix(),
        });
        let request = Request::Auth(AuthRequest {
            request: Some(login),
        });
        match self.core.propose(request).await? {
            Applied::Auth { token: Some(token) } => Ok(token),
            other => Err(ApiError::Internal(format!("apply answered with {other:?}"))),
        }
    }

    async fn change(
        &self,
        caller: Option<AuthInfo>,
        change: Auth,
    ) -> Result<Option<ResponseHeader>, Status> {
        Ok(self.core.auth_change(&caller, change).await?)
    }
}

#[tonic::async_trait]
impl auth_server::Auth for AuthService {
    async fn auth_enable(
        &self,
        req: GrpcRequest<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let caller = self.admin(&req)?;
        let header = self.change(caller, Auth::Enable(req.into_inner())).await?;
        Ok(Response::new(AuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        req: GrpcRequest<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let caller = self.admin(&req)?;
        let header = self.change(caller, Auth::Disable(req.into_inner())).await?;
        Ok(Response::new(AuthDisableResponse { header }))
    }

    async fn auth_status(
        &self,
        req: GrpcRequest<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        self.core.caller(req.metadata())?;
        self.core.linearizable_barrier().await?;
        let state = self.core.auth_state();
        Ok(Response::new(AuthStatusResponse {
            header: self.header()?,
            enabled: state.enabled,
            auth_revision: state.revision,
        }))
    }

    async fn authenticate(
        &self,
        req: GrpcRequest<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let req = req.into_inner();
        if let TokenProvider::Jwt(_) = &*self.core.tokens {
            // No proposal follows: read the auth state linearizably, as the login would see it.
            self.core.linearizable_barrier().await?;
        }
        let state = self.core.auth_state();
        if !state.enabled {
            return Err(ApiError::from(AuthError::NotEnabled).into());
        }
        let hash = state
            .users
            .get(&req.name)
            .map(|u| String::from_utf8_lossy(&u.password).into_owned())
            .ok_or(ApiError::from(AuthError::AuthFailed))?;
        let password = req.password;
        let matches = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .unwrap_or(false);
        if !matches {
            return Err(ApiError::from(AuthError::AuthFailed).into());
        }
        let token = match &*self.core.tokens {
            TokenProvider::Simple(_) => self.login(req.name).await?,
            TokenProvider::Jwt(jwt) => {
                let jwt = jwt.clone();
                tokio::task::spawn_blocking(move || {
                    jwt.assign(&req.name, state.revision, SystemTime::now())
                })
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(ApiError::from)?
            }
        };
        Ok(Response::new(AuthenticateResponse {
            header: self.header()?,
            token,
        }))
    }

    async fn user_add(
        &self,
        req: GrpcRequest<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let caller = self.admin(&req)?;
        let mut req = req.into_inner();
        if req.name.is_empty() {
            return Err(ApiError::from(AuthError::UserEmpty).into());
        }
        let no_password = req.options.is_some_and(|o| o.no_password);
        if !no_password {
            req.hashed_password = self
                .core
                .hash_password(std::mem::take(&mut req.password))
                .await?;
        }
        let header = self.change(caller, Auth::UserAdd(req)).await?;
        Ok(Response::new(AuthUserAddResponse { header }))
    }

    async fn user_get(
        &self,
        req: GrpcRequest<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let caller = self.core.caller(req.metadata())?;
        let name = req.into_inner().name;
        // A user may look at themselves.
        if caller.as_ref().is_none_or(|c| c.user != name) {
            self.core
                .permit_admin(&caller, AuthError::PermissionDenied)?;
        }
        self.core.linearizable_barrier().await?;
        let state = self.core.auth_state();
        let user = state
            .users
            .get(&name)
            .ok_or(ApiError::from(AuthError::UserNotFound))?;
        Ok(Response::new(AuthUserGetResponse {
            header: self.header()?,
            roles: user.roles.clone(),
        }))
    }

    async fn user_list(
        &self,
        req: GrpcRequest<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        self.admin(&req)?;
        self.core.linearizable_barrier().await?;
        let users = self.core.auth_state().users.keys().cloned().collect();
        Ok(Response::new(AuthUserListResponse {
            header: self.header()?,
            users,
        }))
    }

    async fn user_delete(
        &self,
        req: GrpcRequest<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let caller = self.admin(&req)?;
        let header = self
            .change(caller, Auth::UserDelete(req.into_inner()))
            .await?;
        Ok(Response::new(AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        req: GrpcRequest<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let caller = self.admin(&req)?;
        let mut req = req.into_inner();
        req.hashed_password = self
            .core
            .hash_password(std::mem::take(&mut req.password))
            .await?;
        let header = self.change(caller, Auth::UserChangePassword(req)).await?;
        Ok(Response::new(AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        req: GrpcRequest<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let caller = self.admin(&req)?;
        let header = self
            .change(caller, Auth::UserGrantRole(req.into_inner()))
            .await?;
        Ok(Response::new(AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        req: GrpcRequest<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let caller = self.admin(&req)?;
        let header = self
            .change(caller, Auth::UserRevokeRole(req.into_inner()))
            .await?;
        Ok(Response::new(AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(
        &self,
        req: GrpcRequest<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let caller = self.admin(&req)?;
        let header = self.change(caller, Auth::RoleAdd(req.into_inner())).await?;
        Ok(Response::new(AuthRoleAddResponse { header }))
    }

    async fn role_get(
        &self,
        req: GrpcRequest<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let caller = self.core.caller(req.metadata())?;
        let role = req.into_inner().role;
        // A user may look at their own roles.
        let state = self.core.auth_state();
        let own = caller
            .as_ref()
            .and_then(|c| state.users.get(&c.user))
            .is_some_and(|u| u.roles.contains(&role));
        if !own {
            self.core
                .permit_admin(&caller, AuthError::PermissionDenied)?;
        }
        self.core.linearizable_barrier().await?;
        let state = self.core.auth_state();
        let perm = match state.roles.get(&role) {
            Some(r) => r.key_permission.clone(),
            // Root's powers are implicit: etcd lists no permissions for it.
            None if role == ROOT => vec![],
            None => return Err(ApiError::from(AuthError::RoleNotFound).into()),
        };
        Ok(Response::new(AuthRoleGetResponse {
            header: self.header()?,
            perm,
        }))
    }

    async fn role_list(
        &self,
        req: GrpcRequest<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        self.admin(&req)?;
        self.core.linearizable_barrier().await?;
        let roles = self.core.auth_state().roles.keys().cloned().collect();
        Ok(Response::new(AuthRoleListResponse {
            header: self.header()?,
            roles,
        }))
    }

    async fn role_delete(
        &self,
        req: GrpcRequest<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let caller = self.admin(&req)?;
        let header = self
            .change(caller, Auth::RoleDelete(req.into_inner()))
            .await?;
        Ok(Response::new(AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        req: GrpcRequest<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let caller = self.admin(&req)?;
        let header = self
            .change(caller, Auth::RoleGrantPermission(req.into_inner()))
            .await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse { header }))
    }

    async fn role_revoke_permission(
        &self,
        req: GrpcRequest<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let caller = self.admin(&req)?;
        let header = self
            .change(caller, Auth::RoleRevokePermission(req.into_inner()))
            .await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse { header }))
    }
}
