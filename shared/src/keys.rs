//! The Redis key schema: every key runfleet writes is named here and nowhere else.
//!
//! All keys start with a configurable prefix (default `runfleet`), so several fleets, or many
//! parallel tests, can share one Redis. Key names use `:` separators.

use crate::ids::{JobId, NodeId, UserId};

/// Builds the Redis key names for one fleet (one prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Key names under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix every key starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    /// List of job ids waiting to be claimed (LPUSH at the head, claimed from the tail: FIFO).
    pub fn ready(&self, queue: &str) -> String {
        self.key(&["queue", queue, "ready"])
    }

    /// List of job ids a node has taken from `ready` but not yet acknowledged.
    pub fn processing(&self, queue: &str, node: &NodeId) -> String {
        self.key(&["queue", queue, "processing", node.as_str()])
    }

    /// Set of nodes that have (or had) a processing list for `queue`, for orphan recovery.
    pub fn claimers(&self, queue: &str) -> String {
        self.key(&["queue", queue, "claimers"])
    }

    /// Hash holding one job's record (spec, status, epoch, node, positions, stats, ...).
    pub fn job(&self, job: &JobId) -> String {
        self.key(&["job", job.as_str()])
    }

    /// Sorted set of a user's job ids, scored by creation time (the status listing).
    pub fn user_jobs(&self, user: &UserId) -> String {
        self.key(&["user", user.as_str(), "jobs"])
    }

    /// Set of a user's job ids that hold a slot against the tier limit.
    pub fn user_active(&self, user: &UserId) -> String {
        self.key(&["user", user.as_str(), "active"])
    }

    /// Hash with a user's subscription (`tier`, `expiresAtMs`).
    pub fn subscription(&self, user: &UserId) -> String {
        self.key(&["user", user.as_str(), "subscription"])
    }

    /// A runner's heartbeat key: exists while the runner's lease is live (TTL = lease).
    pub fn heartbeat(&self, job: &JobId) -> String {
        self.key(&["heartbeat", job.as_str()])
    }

    /// Sorted set of running job ids scored by lease expiry (ms, Redis clock), for the sweep.
    pub fn leases(&self) -> String {
        self.key(&["leases"])
    }

    /// List of commands (stop requests) addressed to one node.
    pub fn commands(&self, node: &NodeId) -> String {
        self.key(&["node", node.as_str(), "commands"])
    }

    /// Set of job ids currently leased to one node.
    pub fn node_jobs(&self, node: &NodeId) -> String {
        self.key(&["node", node.as_str(), "jobs"])
    }

    /// A node's own heartbeat key (JSON with capacity and runner count; TTL = lease).
    pub fn node(&self, node: &NodeId) -> String {
        self.key(&["node", node.as_str()])
    }

    /// Set of every job holding a slot, fleet-wide (backpressure).
    pub fn active(&self) -> String {
        self.key(&["active"])
    }

    /// Set of every job waiting in the queue (backpressure; backend-independent).
    pub fn queued(&self) -> String {
        self.key(&["queued"])
    }

    /// Hash of one API key: owner and SHA-256 of the key.
    pub fn api_key(&self, key_id: &str) -> String {
        self.key(&["apikey", key_id])
    }

    /// Set of a user's API key ids.
    pub fn user_keys(&self, user: &UserId) -> String {
        self.key(&["user", user.as_str(), "keys"])
    }

    /// Sorted set of node ids scored by their last heartbeat (ms, Redis clock).
    pub fn nodes(&self) -> String {
        self.key(&["nodes"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_prefix() {
        let k = Keys::new("t1");
        assert_eq!(k.ready("jobs"), "t1:queue:jobs:ready");
        assert_eq!(k.job(&JobId::new("job-1")), "t1:job:job-1");
        assert_eq!(k.user_active(&UserId::new("u")), "t1:user:u:active");
        assert_eq!(
            k.processing("jobs", &NodeId::new("n1")),
            "t1:queue:jobs:processing:n1"
        );
    }
}
