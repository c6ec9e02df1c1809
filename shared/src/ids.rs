//! Identifier newtypes. Each id is a distinct type so that a user id can never be passed where
//! a job id is expected; all of them serialize as plain JSON strings.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a job, user or strategy id may be (a JSON Schema `pattern`): 1 to 128 ASCII letters,
/// digits and `. _ : @ -`. The API checks it ([`crate::validate::check_id`]) and so does the
/// admission script, for specs that reach Redis another way; the job spec's schema carries it.
pub const ID_PATTERN: &str = "^[A-Za-z0-9._:@-]{1,128}$";

/// Defines an id newtype. Attributes after `;` go on the inner `String`: they add the
/// constraints that hold for that id to its JSON Schema.
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident $(; $(#[$inner:meta])*)?) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
        )]
        #[serde(transparent)]
        pub struct $name($($(#[$inner])*)? String);

        impl $name {
            /// Wraps an existing identifier. Validation of user-supplied ids happens at the API edge.
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }
    };
}

string_id!(
    /// A job: one requested runner, from its start request until it ends. Also the runner's
    /// `workerId` in the API, since a job runs as exactly one runner at a time.
    JobId;
    #[schemars(regex(pattern = ID_PATTERN), length(min = 1, max = 128))]
);
string_id!(
    /// The user (tenant) a job belongs to. `system` is reserved for the fleet-wide status.
    UserId;
    #[schemars(regex(pattern = ID_PATTERN), length(min = 1, max = 128))]
    #[schemars(extend("not" = { "const": crate::validate::SYSTEM_USER }))]
);
string_id!(
    /// A worker-node process. A new one is made at every process start (reusing a name breaks
    /// orphan recovery), so it identifies one incarnation, not a host.
    NodeId
);
string_id!(
    /// The user's own name for a strategy (`strategyId` in the start request).
    StrategyId;
    #[schemars(regex(pattern = ID_PATTERN), length(min = 1, max = 128))]
);
string_id!(
    /// The broker a strategy trades on (`brokerId` in the start request).
    BrokerId
);

impl JobId {
    /// A fresh, time-ordered job id (`job-` followed by a UUIDv7).
    pub fn generate() -> Self {
        Self(format!("job-{}", Uuid::now_v7()))
    }
}

impl JobId {
    /// A fresh job id ([`JobId::generate`]) that lands where `placement` says: its user's
    /// shard in a sharded fleet ([`crate::store::JobStore::placement`]).
    pub fn generate_in(placement: crate::shard::Placement) -> Self {
        Self(placement.make(|| Self::generate().0))
    }
}

impl NodeId {
    /// A fresh node id (`node-` followed by a random UUID), made once per process start.
    pub fn generate() -> Self {
        Self(format!("node-{}", Uuid::new_v4()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_unique_and_prefixed() {
        let a = JobId::generate();
        let b = JobId::generate();
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("job-"));
        assert!(NodeId::generate().as_str().starts_with("node-"));
    }

    #[test]
    fn ids_serialize_as_plain_strings() {
        let id = UserId::new("user-123");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"user-123\"");
        let back: UserId = serde_json::from_str("\"user-123\"").unwrap();
        assert_eq!(back, id);
    }
}
