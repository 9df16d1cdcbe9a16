//! UserService through a real auth-service: every RPC, the permission each one needs, password
//! rules and the rule that the last enabled admin stays.

#![allow(clippy::expect_used)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use integration_tests::{ADMIN, OTHER_STUDENT, PASSWORD, STUDENT, Stack, TEACHER, with_token};
use school_client::error_info;
use school_proto::auth::v1::user_service_client::UserServiceClient;
use school_proto::auth::v1::{
    ChangePasswordRequest, CreateServiceAccountRequest, CreateUserRequest,
    DeleteServiceAccountRequest, DeleteUserRequest, DisableUserRequest, EnableUserRequest,
    GetUserRequest, ListServiceAccountsRequest, ListUsersRequest, LoginRequest,
    ResetPasswordRequest, Role, RotateServiceAccountSecretRequest, UpdateUserRoleRequest,
};
use tonic::transport::Channel;
use tonic::{Code, Status};

const NEW_PASSWORD: &str = "a brand new passphrase";

async fn users(stack: &Stack) -> UserServiceClient<Channel> {
    stack.auth.user_client().await
}

/// Returns the code of a login as `username` with `password`.
async fn login_code(stack: &Stack, username: &str, password: &str) -> Code {
    let result = stack
        .auth
        .client()
        .await
        .login(LoginRequest {
            username: username.to_owned(),
            password: password.to_owned(),
        })
        .await;
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

fn create_request(username: &str, password: &str, role: Role) -> CreateUserRequest {
    CreateUserRequest {
        username: username.to_owned(),
        password: password.to_owned(),
        role: role.into(),
    }
}

fn reason(status: &Status) -> String {
    error_info(status)
        .map(|info| info.reason)
        .unwrap_or_default()
}

#[tokio::test]
async fn admin_creates_gets_and_lists_users() {
    let stack = Stack::start().await;
    let admin = stack.token(ADMIN).await;
    let mut client = users(&stack).await;

    let created = client
        .create_user(with_token(
            create_request("nina", NEW_PASSWORD, Role::Teacher),
            &admin,
        ))
        .await
        .expect("admin creates a user")
        .into_inner()
        .user
        .expect("created user");
    let fetched = client
        .get_user(with_token(
            GetUserRequest {
                username: "nina".into(),
            },
            &admin,
        ))
        .await
        .expect("admin reads the user")
        .into_inner()
        .user
        .expect("fetched user");

    assert_eq!(created, fetched);
    assert_eq!(fetched.role(), Role::Teacher);
    assert!(!fetched.disabled);
    assert!(fetched.created_at > 0);
    assert_eq!(login_code(&stack, "nina", NEW_PASSWORD).await, Code::Ok);

    // Two users a page, following next_page_token to the end.
    let mut names = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_users(with_token(
                ListUsersRequest {
                    page_size: 2,
                    page_token: page_token.clone(),
                },
                &admin,
            ))
            .await
            .expect("admin lists users")
            .into_inner();
        pages += 1;
        assert!(page.users.len() <= 2);
        names.extend(page.users.into_iter().map(|user| user.username));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(names, [ADMIN, "nina", STUDENT, OTHER_STUDENT, TEACHER]);
    assert_eq!(pages, 3);

    let missing = client
        .get_user(with_token(
            GetUserRequest {
                username: "nobody".into(),
            },
            &admin,
        ))
        .await
        .expect_err("unknown user");
    assert_eq!(missing.code(), Code::NotFound);
    let taken = client
        .create_user(with_token(
            create_request("nina", NEW_PASSWORD, Role::Student),
            &admin,
        ))
        .await
        .expect_err("taken username");
    assert_eq!(taken.code(), Code::AlreadyExists);
    let bad_token = client
        .list_users(with_token(
            ListUsersRequest {
                page_size: 2,
                page_token: "not a token".into(),
            },
            &admin,
        ))
        .await
        .expect_err("invalid page token");
    assert_eq!(bad_token.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn new_passwords_follow_nist_rules() {
    let stack = Stack::start().await;
    let admin = stack.token(ADMIN).await;
    let mut client = users(&stack).await;

    for (password, problem) in [
        ("short", "at least 8 characters"),
        ("password123", "too common"),
        ("QWERTYUIOP", "too common"),
    ] {
        let rejected = client
            .create_user(with_token(
                create_request("pat", password, Role::Student),
                &admin,
            ))
            .await
            .expect_err("weak password");
        assert_eq!(rejected.code(), Code::InvalidArgument, "{password:?}");
        assert!(rejected.message().contains(problem), "{rejected:?}");
        assert!(!rejected.message().contains(password), "{rejected:?}");
        let field = error_info(&rejected)
            .and_then(|info| info.metadata.get("field").cloned())
            .unwrap_or_default();
        assert_eq!(field, "password");
    }

    let reset = client
        .reset_password(with_token(
            ResetPasswordRequest {
                username: STUDENT.into(),
                new_password: "iloveyou".into(),
            },
            &admin,
        ))
        .await
        .expect_err("common password on reset");
    assert_eq!(reset.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn user_changes_own_password() {
    let stack = Stack::start().await;
    let student = stack.token(STUDENT).await;
    let mut client = users(&stack).await;

    let wrong_old = client
        .change_password(with_token(
            ChangePasswordRequest {
                old_password: "not my password".into(),
                new_password: NEW_PASSWORD.into(),
            },
            &student,
        ))
        .await
        .expect_err("wrong current password");
    assert_eq!(wrong_old.code(), Code::InvalidArgument);
    assert!(
        wrong_old.message().contains("old_password"),
        "{wrong_old:?}"
    );

    client
        .change_password(with_token(
            ChangePasswordRequest {
                old_password: PASSWORD.into(),
                new_password: NEW_PASSWORD.into(),
            },
            &student,
        ))
        .await
        .expect("student changes own password");

    assert_eq!(
        login_code(&stack, STUDENT, PASSWORD).await,
        Code::Unauthenticated
    );
    assert_eq!(login_code(&stack, STUDENT, NEW_PASSWORD).await, Code::Ok);
    // Only the caller's own account changed.
    assert_eq!(login_code(&stack, OTHER_STUDENT, PASSWORD).await, Code::Ok);
}

#[tokio::test]
async fn change_password_guesses_are_throttled() {
    let stack = Stack::start().await;
    let student = stack.token(STUDENT).await;
    let mut client = users(&stack).await;

    // The default throttle blocks a username after five failures, as for Login.
    let mut codes = Vec::new();
    for attempt in 0..7 {
        let guess = client
            .change_password(with_token(
                ChangePasswordRequest {
                    old_password: format!("guess number {attempt}"),
                    new_password: NEW_PASSWORD.into(),
                },
                &student,
            ))
            .await
            .expect_err("wrong current password");
        codes.push(guess.code());
    }
    assert_eq!(&codes[..5], &[Code::InvalidArgument; 5]);
    assert_eq!(&codes[5..], &[Code::ResourceExhausted; 2]);

    // Login for that username is blocked too: the guesses count against the same account.
    assert_eq!(
        login_code(&stack, STUDENT, PASSWORD).await,
        Code::ResourceExhausted
    );
}

#[tokio::test]
async fn admin_resets_password() {
    let stack = Stack::start().await;
    let admin = stack.token(ADMIN).await;

    users(&stack)
        .await
        .reset_password(with_token(
            ResetPasswordRequest {
                username: TEACHER.into(),
                new_password: NEW_PASSWORD.into(),
            },
            &admin,
        ))
        .await
        .expect("admin resets a password");

    assert_eq!(
        login_code(&stack, TEACHER, PASSWORD).await,
        Code::Unauthenticated
    );
    assert_eq!(login_code(&stack, TEACHER, NEW_PASSWORD).await, Code::Ok);
}

#[tokio::test]
async fn disable_and_enable_govern_new_logins() {
    let stack = Stack::start().await;
    let admin = stack.token(ADMIN).await;
    let mut client = users(&stack).await;

    let disabled = client
        .disable_user(with_token(
            DisableUserRequest {
                username: TEACHER.into(),
            },
            &admin,
        ))
        .await
        .expect("admin disables a user")
        .into_inner()
        .user
        .expect("disabled user");
    assert!(disabled.disabled);
    assert_eq!(
        login_code(&stack, TEACHER, PASSWORD).await,
        Code::Unauthenticated
    );

    let enabled = client
        .enable_user(with_token(
            EnableUserRequest {
                username: TEACHER.into(),
            },
            &admin,
        ))
        .await
        .expect("admin enables a user")
        .into_inner()
        .user
        .expect("enabled user");
    assert!(!enabled.disabled);
    assert_eq!(login_code(&stack, TEACHER, PASSWORD).await, Code::Ok);
}

#[tokio::test]
async fn role_change_applies_to_new_tokens() {
    let stack = Stack::start().await;
    let admin = stack.token(ADMIN).await;

    let updated = users(&stack)
        .await
        .update_user_role(with_token(
            UpdateUserRoleRequest {
                username: STUDENT.into(),
                role: Role::Teacher.into(),
            },
            &admin,
        ))
        .await
        .expect("admin changes a role")
        .into_inner()
        .user
        .expect("updated user");
    assert_eq!(updated.role(), Role::Teacher);

    // The role claim of a new token, read without verifying: the guard tests cover that.
    let token = stack.token(STUDENT).await;
    let payload = token.split('.').nth(1).expect("JWT payload");
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url"))
            .expect("JSON claims");
    assert_eq!(claims["role"], "teacher", "{claims}");

    let unspecified = users(&stack)
        .await
        .update_user_role(with_token(
            UpdateUserRoleRequest {
                username: STUDENT.into(),
                role: Role::Unspecified.into(),
            },
            &admin,
        ))
        .await
        .expect_err("role is required");
    assert_eq!(unspecified.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn deleted_user_cannot_log_in() {
    let stack = Stack::start().await;
    let admin = stack.token(ADMIN).await;
    let mut client = users(&stack).await;

    client
        .delete_user(with_token(
            DeleteUserRequest {
                username: OTHER_STUDENT.into(),
            },
            &admin,
        ))
        .await
        .expect("admin deletes a user");

    assert_eq!(
        login_code(&stack, OTHER_STUDENT, PASSWORD).await,
        Code::Unauthenticated
    );
    let again = client
        .delete_user(with_token(
            DeleteUserRequest {
                username: OTHER_STUDENT.into(),
            },
            &admin,
        ))
        .await
        .expect_err("already deleted");
    assert_eq!(again.code(), Code::NotFound);
}

#[tokio::test]
async fn last_admin_cannot_be_removed() {
    let stack = Stack::start().await;
    let admin = stack.token(ADMIN).await;
    let mut client = users(&stack).await;

    let demoted = client
        .update_user_role(with_token(
            UpdateUserRoleRequest {
                username: ADMIN.into(),
                role: Role::Teacher.into(),
            },
            &admin,
        ))
        .await
        .expect_err("demoting the last admin");
    let disabled = client
        .disable_user(with_token(
            DisableUserRequest {
                username: ADMIN.into(),
            },
            &admin,
        ))
        .await
        .expect_err("disabling the last admin");
    let deleted = client
        .delete_user(with_token(
            DeleteUserRequest {
                username: ADMIN.into(),
            },
            &admin,
        ))
        .await
        .expect_err("deleting the last admin");

    for status in [&demoted, &disabled, &deleted] {
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert_eq!(reason(status), "LAST_ADMIN", "{status:?}");
    }
    assert_eq!(login_code(&stack, ADMIN, PASSWORD).await, Code::Ok);

    // With a second admin, the first may go.
    client
        .update_user_role(with_token(
            UpdateUserRoleRequest {
                username: TEACHER.into(),
                role: Role::Admin.into(),
            },
            &admin,
        ))
        .await
        .expect("promote a second admin");
    client
        .delete_user(with_token(
            DeleteUserRequest {
                username: ADMIN.into(),
            },
            &admin,
        ))
        .await
        .expect("delete an admin that is not the last");
}

/// One call of every UserService method that needs more than a self-service permission, with
/// its name and permission.
async fn call_managed_method(
    client: &mut UserServiceClient<Channel>,
    method: &str,
    token: &str,
) -> Result<(), Status> {
    let username = || OTHER_STUDENT.to_owned();
    match method {
        "CreateUser" => client
            .create_user(with_token(
                create_request("mallory", NEW_PASSWORD, Role::Admin),
                token,
            ))
            .await
            .map(drop),
        "GetUser" => client
            .get_user(with_token(
                GetUserRequest {
                    username: username(),
                },
                token,
            ))
            .await
            .map(drop),
        "ListUsers" => client
            .list_users(with_token(ListUsersRequest::default(), token))
            .await
            .map(drop),
        "UpdateUserRole" => client
            .update_user_role(with_token(
                UpdateUserRoleRequest {
                    username: username(),
                    role: Role::Admin.into(),
                },
                token,
            ))
            .await
            .map(drop),
        "DisableUser" => client
            .disable_user(with_token(
                DisableUserRequest {
                    username: username(),
                },
                token,
            ))
            .await
            .map(drop),
        "EnableUser" => client
            .enable_user(with_token(
                EnableUserRequest {
                    username: username(),
                },
                token,
            ))
            .await
            .map(drop),
        "DeleteUser" => client
            .delete_user(with_token(
                DeleteUserRequest {
                    username: username(),
                },
                token,
            ))
            .await
            .map(drop),
        "ResetPassword" => client
            .reset_password(with_token(
                ResetPasswordRequest {
                    username: username(),
                    new_password: NEW_PASSWORD.into(),
                },
                token,
            ))
            .await
            .map(drop),
        "CreateServiceAccount" => client
            .create_service_account(with_token(
                CreateServiceAccountRequest {
                    name: "sneaky".into(),
                    audiences: vec!["student-service".into()],
                },
                token,
            ))
            .await
            .map(drop),
        "ListServiceAccounts" => client
            .list_service_accounts(with_token(ListServiceAccountsRequest {}, token))
            .await
            .map(drop),
        "RotateServiceAccountSecret" => client
            .rotate_service_account_secret(with_token(
                RotateServiceAccountSecretRequest {
                    client_id: "svc-any".into(),
                },
                token,
            ))
            .await
            .map(drop),
        "DeleteServiceAccount" => client
            .delete_service_account(with_token(
                DeleteServiceAccountRequest {
                    client_id: "svc-any".into(),
                },
                token,
            ))
            .await
            .map(drop),
        other => panic!("no call for {other}"),
    }
}

const MANAGED_METHODS: [(&str, &str); 12] = [
    ("CreateUser", "users.manage"),
    ("GetUser", "users.read"),
    ("ListUsers", "users.read"),
    ("UpdateUserRole", "users.manage"),
    ("DisableUser", "users.manage"),
    ("EnableUser", "users.manage"),
    ("DeleteUser", "users.manage"),
    ("ResetPassword", "users.manage"),
    ("CreateServiceAccount", "service_accounts.manage"),
    ("ListServiceAccounts", "service_accounts.manage"),
    ("RotateServiceAccountSecret", "service_accounts.manage"),
    ("DeleteServiceAccount", "service_accounts.manage"),
];

#[tokio::test]
async fn user_methods_deny_other_roles() {
    let stack = Stack::start().await;
    let mut client = users(&stack).await;

    for username in [TEACHER, STUDENT] {
        let token = stack.token(username).await;
        for (method, permission) in MANAGED_METHODS {
            let denied = call_managed_method(&mut client, method, &token)
                .await
                .expect_err("a non-admin is denied");
            assert_eq!(denied.code(), Code::PermissionDenied, "{username} {method}");
            let info = error_info(&denied).expect("ErrorInfo");
            assert_eq!(info.domain, "school-guard");
            assert_eq!(info.reason, "PERMISSION_DENIED");
            assert_eq!(
                info.metadata.get("permission").map(String::as_str),
                Some(permission),
                "{method}"
            );
            assert_eq!(
                info.metadata.get("method").map(String::as_str),
                Some(format!("school.auth.v1.UserService/{method}").as_str())
            );
        }
    }

    // Without a token every method, ChangePassword included, is unauthenticated.
    for (method, _) in MANAGED_METHODS {
        let denied = call_managed_method(&mut client, method, "")
            .await
            .expect_err("no token");
        assert_eq!(denied.code(), Code::Unauthenticated, "{method}");
    }
    let anonymous = client
        .change_password(ChangePasswordRequest {
            old_password: PASSWORD.into(),
            new_password: NEW_PASSWORD.into(),
        })
        .await
        .expect_err("no token");
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    assert_eq!(reason(&anonymous), "MISSING_CREDENTIALS");

    // Nothing changed.
    assert_eq!(login_code(&stack, OTHER_STUDENT, PASSWORD).await, Code::Ok);
    assert_eq!(
        login_code(&stack, "mallory", NEW_PASSWORD).await,
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn service_token_cannot_manage_accounts() {
    let stack = Stack::start().await;
    let admin = stack.token(ADMIN).await;
    let mut client = users(&stack).await;
    let account = client
        .create_service_account(with_token(
            CreateServiceAccountRequest {
                name: "reporting".into(),
                audiences: vec!["school".into()],
            },
            &admin,
        ))
        .await
        .expect("admin creates a service account")
        .into_inner();
    let token = stack
        .auth
        .client()
        .await
        .issue_service_token(school_proto::auth::v1::IssueServiceTokenRequest {
            client_id: account.client_id,
            client_secret: account.client_secret,
            audience: "school".into(),
        })
        .await
        .expect("service token")
        .into_inner()
        .access_token;

    for (method, _) in MANAGED_METHODS {
        let denied = call_managed_method(&mut client, method, &token)
            .await
            .expect_err("a service is denied");
        assert_eq!(denied.code(), Code::PermissionDenied, "{method}");
    }
    let change = client
        .change_password(with_token(
            ChangePasswordRequest {
                old_password: PASSWORD.into(),
                new_password: NEW_PASSWORD.into(),
            },
            &token,
        ))
        .await
        .expect_err("a service has no password");
    assert_eq!(change.code(), Code::PermissionDenied);
}
