use super::*;
use cairn_proto::etcdserverpb::{
    AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleDeleteRequest,
    AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest, AuthUserAddRequest,
    AuthUserDeleteRequest, AuthUserGrantRoleRequest, AuthUserRevokeRoleRequest,
};

fn scratch() -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    (dir, engine)
}

fn user_add(name: &str) -> Request {
    Request::UserAdd(AuthUserAddRequest {
        name: name.into(),
        hashed_password: "hash".into(),
        ..Default::default()
    })
}

fn grant_role(user: &str, role: &str) -> Request {
    Request::UserGrantRole(AuthUserGrantRoleRequest {
        user: user.into(),
        role: role.into(),
    })
}

fn grant(role: &str, t: permission::Type, key: &str, end: &[u8]) -> Request {
    Request::RoleGrantPermission(AuthRoleGrantPermissionRequest {
        name: role.into(),
        perm: Some(Permission {
            perm_type: t as i32,
            key: Bytes::copy_from_slice(key.as_bytes()),
            range_end: Bytes::copy_from_slice(end),
        }),
    })
}

/// Applies `reqs` in order, writing each change; returns the state and each outcome.
fn run(engine: &Engine, reqs: Vec<Request>) -> (AuthState, Vec<Result<(), AuthError>>) {
    let mut state = AuthState::load(engine).unwrap();
    let mut outcomes = vec![];
    for r in reqs {
        let mut batch = engine.batch();
        outcomes.push(state.apply(&r, &mut batch));
        engine
            .write(batch, crate::engine::Durability::Buffered)
            .unwrap();
    }
    (state, outcomes)
}

#[test]
fn management_follows_etcd_and_survives_a_reload() {
    let (_d, engine) = scratch();
    let (state, outcomes) = run(
        &engine,
        vec![
            Request::Enable(AuthEnableRequest {}),
            user_add("root"),
            Request::Enable(AuthEnableRequest {}),
            grant_role("root", "root"),
            Request::Enable(AuthEnableRequest {}),
            user_add("root"),
            user_add(""),
            Request::RoleAdd(AuthRoleAddRequest { name: "r".into() }),
            Request::RoleAdd(AuthRoleAddRequest { name: "r".into() }),
            grant_role("bob", "r"),
            user_add("bob"),
            grant_role("bob", "nosuch"),
            grant_role("bob", "r"),
            Request::UserRevokeRole(AuthUserRevokeRoleRequest {
                name: "root".into(),
                role: "root".into(),
            }),
            Request::UserDelete(AuthUserDeleteRequest {
                name: "root".into(),
            }),
            Request::RoleDelete(AuthRoleDeleteRequest {
                role: "root".into(),
            }),
            Request::RoleRevokePermission(AuthRoleRevokePermissionRequest {
                role: "r".into(),
                key: "k".into(),
                range_end: Bytes::new(),
            }),
        ],
    );
    use AuthError::*;
    assert_eq!(
        outcomes,
        vec![
            Err(RootUserNotExist),
            Ok(()),
            Err(RootRoleNotExist),
            Ok(()),
            Ok(()),
            Err(UserExists),
            Err(UserEmpty),
            Ok(()),
            Err(RoleExists),
            Err(UserNotFound),
            Ok(()),
            Err(RoleNotFound),
            Ok(()),
            Err(InvalidAuthManagement),
            Err(InvalidAuthManagement),
            Err(InvalidAuthManagement),
            Err(PermissionNotGranted),
        ]
    );
    assert!(state.enabled && state.is_root("root") && !state.is_root("bob"));
    assert_eq!(state.revision, 6);
    assert_eq!(AuthState::load(&engine).unwrap(), state);

    let (state, outcomes) = run(
        &engine,
        vec![
            Request::Disable(AuthDisableRequest {}),
            Request::RoleDelete(AuthRoleDeleteRequest { role: "r".into() }),
        ],
    );
    assert_eq!(outcomes, vec![Ok(()), Ok(())]);
    assert!(state.users["bob"].roles.is_empty());
    assert_eq!(AuthState::load(&engine).unwrap(), state);
}

#[test]
fn permissions_cover_ranges_by_their_union() {
    let (_d, engine) = scratch();
    let (state, outcomes) = run(
        &engine,
        vec![
            user_add("alice"),
            Request::RoleAdd(AuthRoleAddRequest { name: "r".into() }),
            grant("r", permission::Type::Read, "/app/", b"/app0"),
            grant("r", permission::Type::Readwrite, "/alice", b""),
            grant("r", permission::Type::Write, "/w1", b"/w3"),
            grant("r", permission::Type::Write, "/w3", b"/w5"),
            grant("r", permission::Type::Read, "/z", &[0]),
            grant_role("alice", "r"),
        ],
    );
    assert!(outcomes.iter().all(|o| o.is_ok()));
    let can = |access, key: &str, end: &[u8]| state.permits("alice", access, key.as_bytes(), end);
    assert!(can(Access::Read, "/app/x", b""));
    assert!(can(Access::Read, "/app/", b"/app0"));
    assert!(!can(Access::Read, "/ap", b"/aq"));
    assert!(!can(Access::Write, "/app/x", b""));
    assert!(can(Access::Write, "/alice", b""));
    assert!(can(Access::Read, "/alice", b""));
    assert!(!can(Access::Read, "/alice2", b""));
    assert!(can(Access::Write, "/w2", b""));
    assert!(!can(Access::Read, "/w2", b""));
    // Adjacent grants together cover a range neither covers alone.
    assert!(can(Access::Write, "/w1", b"/w5"));
    assert!(!can(Access::Write, "/w1", b"/w6"));
    assert!(can(Access::Read, "/zz", &[0]));
    assert!(can(Access::Read, "/zzz", b"/zzzz"));
    assert!(!can(Access::Read, "/y", &[0]));
    assert!(!state.permits("nobody", Access::Read, b"/app/x", b""));
}
