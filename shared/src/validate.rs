//! Fleet-level checks of what a client sends: ids (they become key names), the reserved
//! `system` user, and the envelope of a start request every runner kind shares (user,
//! strategy id, credentials, display name). What a kind's own configuration must be is the
//! kind's business ([`crate::kind::RunnerKind::validate`]); a refused field is a
//! [`FieldError`] either way, which the API answers with 400 naming the field.

/// A refused field: the JSON path of the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path, e.g. `config.parameters.rsiPeriod`.
    pub field: String,
    /// What is wrong, for a human.
    pub message: String,
}

impl FieldError {
    /// A refusal of `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// `Err` refusing `field` with `message`.
pub fn refuse<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, FieldError> {
    Err(FieldError::new(field, message))
}

/// Checks an identifier-like string: 1..=max chars of `A-Z a-z 0-9 . _ : @ -`.
pub fn check_id(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.is_empty() || value.len() > max {
        return refuse(field, format!("must be 1 to {max} characters"));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._:@-".contains(c))
    {
        return refuse(field, "may contain only letters, digits and . _ : @ -");
    }
    Ok(())
}

/// The user id the fleet-wide status is asked for (`GET /v1/users/system/runners`, admin
/// only, as the seed's `getStatus({userId: 'system'})`); no real user may have it.
pub const SYSTEM_USER: &str = "system";

/// Checks a user id: an id ([`check_id`], at most 128 characters) that is not
/// [`SYSTEM_USER`].
pub fn check_user_id(field: &str, value: &str) -> Result<(), FieldError> {
    check_id(field, value, 128)?;
    if value == SYSTEM_USER {
        return refuse(
            field,
            "`system` is reserved for the fleet-wide status and cannot be a user",
        );
    }
    Ok(())
}

/// Checks a free text: 1..=max characters, not only blanks.
pub fn check_text(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.trim().is_empty() || value.chars().count() > max {
        return refuse(field, format!("must be 1 to {max} characters"));
    }
    Ok(())
}

/// What validation lets through beyond the public API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ValidationOptions {
    /// Accept test-only configurations (the `panic-test` strategy). Off in production: a fleet
    /// enables it only for fault tests (`testing.test_strategies`).
    pub allow_test_strategies: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_the_reserved_user_are_refused_by_name() {
        assert_eq!(check_user_id("userId", "").unwrap_err().field, "userId");
        assert_eq!(check_user_id("userId", "a b").unwrap_err().field, "userId");
        assert!(check_user_id("userId", SYSTEM_USER).is_err());
        check_user_id("userId", "user-123:x@y.z_").unwrap();
        assert!(check_id("jobId", &"j".repeat(129), 128).is_err());
        assert!(check_text("config.name", "  ", 128).is_err());
        assert!(check_text("config.name", &"é".repeat(128), 128).is_ok());
    }
}
