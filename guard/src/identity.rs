//! The caller identity and access level that the guard layer passes to handlers in the request
//! extensions.

use crate::claims::Claims;

/// The authenticated caller of a request, taken from a verified access token.
///
/// The guard layer inserts it into the request extensions of every call to a protected method;
/// handlers read it with `request.extensions().get::<Identity>()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The username of the caller (the token's `sub` claim).
    pub subject: String,
    /// The role of the caller (the token's `role` claim).
    pub role: String,
    /// The id of the token (the `jti` claim).
    pub token_id: String,
    /// When the token expires, in seconds since the Unix epoch.
    pub expires_at: i64,
}

impl From<Claims> for Identity {
    fn from(claims: Claims) -> Self {
        Identity {
            subject: claims.sub,
            role: claims.role,
            token_id: claims.jti,
            expires_at: claims.exp,
        }
    }
}

/// How much of a method's data the caller may reach, as decided by the policy.
///
/// Inserted next to [`Identity`]. A handler that serves [`Access::OwnerOnly`] must check that the
/// record it touches belongs to [`Identity::subject`] and otherwise fail with `PERMISSION_DENIED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Every record the method can reach.
    Full,
    /// Only records owned by the caller.
    OwnerOnly,
}

/// The policy rule that allowed a call: the method and the permission the caller's role granted.
///
/// Inserted next to [`Identity`], so that a handler's audit event can name the rule that
/// decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The method, as `package.Service/Method`.
    pub method: String,
    /// The permission that allowed the call: the rule's `permission`, or its `owner_permission`
    /// for [`Access::OwnerOnly`].
    pub permission: String,
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "methods.\"{}\" {}", self.method, self.permission)
    }
}
