//! Who is calling: the admin (the configured admin key) or one user (a per-user API key).
//!
//! User keys look like `rfk_<keyId>_<secret>`: 96 random bits of id and 256 of secret. Only a
//! SHA-256 hash of the whole key is stored, and presented keys are compared with it in constant
//! time, as is the admin key.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use rand::RngCore;
use runfleet_shared::ids::UserId;
use runfleet_shared::queue::JobQueue;
use runfleet_shared::store::FleetStore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::rate_limit::{CallClass, RateLimits};
use crate::state::AppState;

/// The public id the admin key goes by in the audit trail and in rate limits: the admin key
/// has no id of its own, and the key itself must never be written anywhere.
pub const ADMIN_KEY_ID: &str = "admin";

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The admin key: may do everything.
    Admin,
    /// A user's API key: may act only for that user.
    User {
        /// The key's owner.
        user: UserId,
        /// The key's public id (`rfk_<keyId>_...`).
        key_id: String,
    },
}

impl Caller {
    /// The public id of the key used: [`ADMIN_KEY_ID`] or a user key's id.
    pub fn key_id(&self) -> &str {
        match self {
            Caller::Admin => ADMIN_KEY_ID,
            Caller::User { key_id, .. } => key_id,
        }
    }

    /// Allows the admin and `user` themselves; any other user is refused with 403.
    pub fn act_for(&self, user: &UserId) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::User { user: u, .. } if u == user => Ok(()),
            Caller::User { .. } => Err(ApiError::Forbidden(
                "this API key belongs to another user".into(),
            )),
        }
    }

    /// Checks `raw` as a user id (400 when it is not one) and allows the admin and that user
    /// (403 for any other): the user the caller acts for.
    pub fn for_user(&self, raw: &str) -> Result<UserId, ApiError> {
        let user = crate::api::user_id(raw)?;
        self.act_for(&user)?;
        Ok(user)
    }

    /// Allows the admin only.
    pub fn admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::User { .. } => Err(ApiError::Forbidden(
                "this endpoint needs the admin key".into(),
            )),
        }
    }
}

/// A freshly issued user key: shown once, then only its hash is kept.
#[derive(Debug)]
pub struct IssuedKey {
    /// The public part, used to find the key.
    pub key_id: String,
    /// The whole key, for the user.
    pub key: String,
    /// SHA-256 hex of the whole key, for the store.
    pub hash: String,
}

/// Makes a new random user key.
pub fn issue_key() -> IssuedKey {
    issue_key_in(runfleet_shared::shard::Placement::ANY)
}

/// Makes a new random user key whose id lands where `placement` says (its user's shard).
pub fn issue_key_in(placement: runfleet_shared::shard::Placement) -> IssuedKey {
    let mut secret = [0u8; 32];
    let mut rng = rand::rng();
    let key_id = placement.make(|| {
        let mut id = [0u8; 12];
        rng.fill_bytes(&mut id);
        hex::encode(id)
    });
    rng.fill_bytes(&mut secret);
    let key = format!("rfk_{key_id}_{}", hex::encode(secret));
    let hash = hash_key(&key);
    IssuedKey { key_id, key, hash }
}

fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl<S: FleetStore, Q: JobQueue + Clone> FromRequestParts<AppState<S, Q>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState<S, Q>) -> Result<Self, ApiError> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(ApiError::Unauthorized(
                "missing API key (Authorization: Bearer <key>)",
            ))?;
        if let Some(admin) = app
            .settings
            .security
            .admin_key
            .as_deref()
            .filter(|k| !k.is_empty())
            && bool::from(presented.as_bytes().ct_eq(admin.as_bytes()))
        {
            return Ok(Caller::Admin);
        }
        let wrong = ApiError::Unauthorized("unknown or revoked API key");
        let key_id = presented
            .strip_prefix("rfk_")
            .and_then(|rest| rest.split_once('_'))
            .map(|(id, _)| id)
            .filter(|id| id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or(wrong)?;
        let (user, stored) = app
            .store
            .key(key_id)
            .await?
            .ok_or(ApiError::Unauthorized("unknown or revoked API key"))?;
        if !bool::from(hash_key(presented).as_bytes().ct_eq(stored.as_bytes())) {
            return Err(ApiError::Unauthorized("unknown or revoked API key"));
        }
        // Keyed by the verified key: a guessed key id cannot spend another key's budget.
        if let Some(limits) = parts.extensions.get::<Arc<RateLimits>>() {
            limits.check(key_id, CallClass::of(&parts.method, parts.uri.path()))?;
        }
        Ok(Caller::User {
            user,
            key_id: key_id.to_owned(),
        })
    }
}

/// Who may act, as extractors: a handler names the check in its arguments instead of repeating
/// it in its body. Each extracts the [`Caller`] first (401, rate limit), then refuses with 403.
///
/// The admin key's caller: any user key is refused with 403 (`this endpoint needs the admin
/// key`).
#[derive(Debug)]
pub struct AdminOnly(pub Caller);

impl<S: FleetStore, Q: JobQueue + Clone> FromRequestParts<AppState<S, Q>> for AdminOnly {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState<S, Q>) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, app).await?;
        caller.admin()?;
        Ok(AdminOnly(caller))
    }
}

/// A caller allowed to act for the user of the path's `{user_id}`: the admin or that user (400
/// when the path's id is not a user id, 403 for another user's key).
#[derive(Debug)]
pub struct ForUser {
    /// Who calls.
    pub caller: Caller,
    /// The user of the path, checked.
    pub user: UserId,
}

/// The path parameter [`ForUser`] reads (other parameters of the route are ignored).
#[derive(serde::Deserialize)]
struct UserPath {
    user_id: String,
}

impl<S: FleetStore, Q: JobQueue + Clone> FromRequestParts<AppState<S, Q>> for ForUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState<S, Q>) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, app).await?;
        let crate::extract::Path(path) =
            crate::extract::Path::<UserPath>::from_request_parts(parts, app).await?;
        let user = caller.for_user(&path.user_id)?;
        Ok(ForUser { caller, user })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_keys_are_unique_and_only_their_hash_matches() {
        let (a, b) = (issue_key(), issue_key());
        assert_ne!(a.key, b.key);
        assert!(a.key.starts_with(&format!("rfk_{}_", a.key_id)));
        assert_eq!(a.key.len(), 4 + 24 + 1 + 64);
        assert_eq!(hash_key(&a.key), a.hash);
        assert!(
            !a.hash.contains(&a.key[29..]),
            "the stored hash reveals nothing of the secret"
        );
    }

    #[test]
    fn users_act_only_for_themselves() {
        let (alice, bob) = (UserId::new("alice"), UserId::new("bob"));
        let key = |user: &UserId| Caller::User {
            user: user.clone(),
            key_id: "0123456789abcdef01234567".into(),
        };
        assert!(key(&alice).act_for(&alice).is_ok());
        assert!(matches!(
            key(&alice).act_for(&bob),
            Err(ApiError::Forbidden(_))
        ));
        assert!(Caller::Admin.act_for(&bob).is_ok());
        assert!(key(&alice).admin().is_err());
        assert_eq!(key(&alice).key_id(), "0123456789abcdef01234567");
        assert_eq!(Caller::Admin.key_id(), "admin");
    }
}
