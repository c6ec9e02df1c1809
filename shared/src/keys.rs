//! The Redis key schema: every key runfleet writes is named here and nowhere else.
//!
//! All keys start with a configurable prefix (default `runfleet`), so several fleets, or many
//! parallel tests, can share one Redis. Key names use `:` separators.
//!
//! Ids come from users (user ids, strategy ids) and may contain `:`, so every part of a key is
//! [escaped](escape) before it is joined: `%`, `:`, `{` and `}` become `%25`, `%3A`, `%7B` and
//! `%7D`. A part then never contains the separator, so splitting a key on `:` gives back its
//! parts, and two different id tuples can never name the same key (user `eve` with strategy
//! `x:s` and user `eve:x` with strategy `s` have different breakers). Ids without those
//! characters appear unchanged. `lib.lua` escapes the same way (a test checks they agree), and
//! no part can open a Redis Cluster hash tag.
//!
//! On a Redis Cluster ([`Keys::clustered`]) the prefix ends in the hash tag `{<prefix>}`, so
//! every key of the fleet hashes to one slot: each script touches keys of one slot, as a
//! cluster requires, and the fleet moves between masters as one piece when its slot does.

use std::borrow::Cow;

use crate::ids::{JobId, NodeId, StrategyId, UserId};

/// One key part, escaped so that it contains none of `%`, `:`, `{`, `}` (see the module docs).
pub fn escape(part: &str) -> Cow<'_, str> {
    if !part.contains(['%', ':', '{', '}']) {
        return Cow::Borrowed(part);
    }
    let mut out = String::with_capacity(part.len() + 8);
    for c in part.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Builds the Redis key names for one fleet (one prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
    /// Under a Redis Cluster hash tag ([`Keys::clustered`]).
    clustered: bool,
}

impl Keys {
    /// Key names under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            clustered: false,
        }
    }

    /// The key names `settings` give: under `key_prefix`, with its hash tag on a cluster.
    pub fn of(settings: &crate::config::RedisSettings) -> Self {
        if settings.cluster {
            Self::clustered(&settings.key_prefix)
        } else {
            Self::new(settings.key_prefix.clone())
        }
    }

    /// Key names for a fleet on a Redis Cluster: every key starts with `<prefix>:{<prefix>}`,
    /// whose hash tag puts them all in one slot (the prefix holds no `{` or `}`: the settings
    /// refuse them).
    pub fn clustered(prefix: &str) -> Self {
        Self {
            prefix: format!("{prefix}:{{{prefix}}}"),
            clustered: true,
        }
    }

    /// Key names of shard `n` of a sharded fleet (`redis.shards > 1`, [`crate::shard`]): every
    /// key starts with `<prefix>:{<prefix>.<n>}`, so each shard is a slot of its own that a
    /// cluster may place on any master. On one Redis the tag only names the shard.
    pub fn shard(settings: &crate::config::RedisSettings, n: usize) -> Self {
        let prefix = &settings.key_prefix;
        Self {
            prefix: format!("{prefix}:{{{prefix}.{n}}}"),
            clustered: settings.cluster,
        }
    }

    /// The key recording how many shards the fleet's state was created with:
    /// `<key_prefix>:shards`, outside every hash tag, so that it is the same key whatever the
    /// mode (one Redis or a cluster, one shard or many).
    pub fn shard_count(settings: &crate::config::RedisSettings) -> String {
        format!("{}:shards", settings.key_prefix)
    }

    /// The Pub/Sub channel on which a sharded fleet's scripts announce work for idle nodes:
    /// a ready list that was empty got a job, or a node got a command (a channel, not a key:
    /// the node's ACL user needs `&<channel>`).
    pub fn wake_channel(settings: &crate::config::RedisSettings) -> String {
        format!("{}:wake", settings.key_prefix)
    }

    /// Whether these are a clustered fleet's keys ([`Keys::clustered`]).
    pub fn is_clustered(&self) -> bool {
        self.clustered
    }

    /// The prefix every key starts with (with its hash tag on a cluster).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// On a cluster, two names of keys that never exist, in the fleet's slot, that every store
    /// script call declares as its keys. The cluster routes the call by them to the master of
    /// the fleet's slot; and while that slot moves between masters (resharding), a call that
    /// declares several keys of which some are missing is refused with TRYAGAIN on both sides
    /// (the client retries), so no script ever runs with part of the fleet's keys moved away.
    /// None on one Redis, whose calls declare no keys (as its ACL users expect).
    pub fn route(&self) -> Vec<String> {
        if !self.clustered {
            return Vec::new();
        }
        vec![self.key(&["route", "a"]), self.key(&["route", "b"])]
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        for p in parts {
            k.push(':');
            k.push_str(&escape(p));
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

    /// Sorted set of node ids scored by the end of their lease (ms, Redis clock): a runner's
    /// lease is its node's. The sweep reads the lapsed ones.
    pub fn node_leases(&self) -> String {
        self.key(&["node_leases"])
    }

    /// Set, with a day's expiry, when a sweep took a lapsed node's runners: that node id may
    /// never claim or renew again.
    pub fn node_fenced(&self, node: &NodeId) -> String {
        self.key(&["node", node.as_str(), "fenced"])
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

    /// Hash with the circuit breaker of one user strategy (`state`, `until`, `trial`, `failures`:
    /// [`crate::policy::BreakerFields`]).
    pub fn breaker(&self, user: &UserId, strategy: &StrategyId) -> String {
        self.key(&["breaker", user.as_str(), strategy.as_str()])
    }

    /// Sorted set of queued job ids whose enqueue is not yet confirmed, by when they became
    /// queued (queue backends outside Redis; the sweep publishes them again when it lasts).
    pub fn pending(&self) -> String {
        self.key(&["pending"])
    }

    /// Sorted set of crashed job ids waiting for their restart, by due time.
    pub fn delayed(&self) -> String {
        self.key(&["delayed"])
    }

    /// Stream of the fleet's runner lifecycle events (fields `job`, `user`, `type`, `epoch`,
    /// `node`, `reason`, `at`), capped by `events.max_len` and `events.max_age_ms`.
    pub fn events(&self) -> String {
        self.key(&["events"])
    }

    /// List of one job's own events (JSON, oldest first, with their stream ids): its history.
    pub fn job_events(&self, job: &JobId) -> String {
        self.key(&["job", job.as_str(), "events"])
    }

    /// List of one job's PnL points (`<ms>,<totalPnL>`, oldest first): its PnL history.
    pub fn job_pnl(&self, job: &JobId) -> String {
        self.key(&["job", job.as_str(), "pnl"])
    }

    /// Hash of fleet-wide counters (`breaker_openings`), for `/metrics`.
    pub fn counters(&self) -> String {
        self.key(&["counters"])
    }

    /// Sorted set of the jobs failed within the last hour, by when they failed (trimmed as jobs
    /// fail), for the `runfleet_runners{status="failed_last_hour"}` gauge.
    pub fn failed(&self) -> String {
        self.key(&["failed"])
    }

    /// List of [`crate::store::FleetSample`]s, newest first (`at,queued,running,active,
    /// restarting,nodes_alive,node_capacity`), capped at `sweep.history_keep`.
    pub fn history(&self) -> String {
        self.key(&["history"])
    }

    /// Set for `sweep.history_every_ms` when a sample is taken: one sample per interval,
    /// whichever orchestrator comes first.
    pub fn history_guard(&self) -> String {
        self.key(&["history", "guard"])
    }

    /// Capped stream of admin actions (tier changes, keys issued and revoked, stops of other
    /// users' runners): the admin audit trail, `GET /v1/audit`. Not the `audit` stream of
    /// accepted fencing writes that `testing.audit` turns on.
    pub fn admin_audit(&self) -> String {
        self.key(&["admin-audit"])
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

    #[test]
    fn a_clustered_fleets_keys_share_one_hash_tag() {
        let k = Keys::clustered("rf");
        assert_eq!(k.job(&JobId::new("j:1")), "rf:{rf}:job:j%3A1");
        assert_eq!(k.ready("jobs"), "rf:{rf}:queue:jobs:ready");
        assert_eq!(k.route(), ["rf:{rf}:route:a", "rf:{rf}:route:b"]);
        assert!(
            Keys::new("rf").route().is_empty(),
            "one Redis: no keys declared"
        );
    }

    #[test]
    fn each_shard_has_a_tag_of_its_own() {
        let mut settings = crate::config::RedisSettings {
            key_prefix: "rf".into(),
            cluster: true,
            ..Default::default()
        };
        let k = Keys::shard(&settings, 7);
        assert_eq!(k.job(&JobId::new("j")), "rf:{rf.7}:job:j");
        assert_eq!(k.route(), ["rf:{rf.7}:route:a", "rf:{rf.7}:route:b"]);
        assert_eq!(Keys::shard_count(&settings), "rf:shards");
        settings.cluster = false;
        assert!(Keys::shard(&settings, 7).route().is_empty());
    }

    #[test]
    fn ids_without_special_characters_are_unchanged_and_others_escaped() {
        assert_eq!(escape("user-123_a.b@c"), "user-123_a.b@c");
        assert_eq!(escape("a:b%c{d}"), "a%3Ab%25c%7Bd%7D");
        let k = Keys::new("P");
        assert_eq!(
            k.breaker(&UserId::new("eve"), &StrategyId::new("x:s")),
            "P:breaker:eve:x%3As"
        );
        assert_eq!(
            k.breaker(&UserId::new("eve:x"), &StrategyId::new("s")),
            "P:breaker:eve%3Ax:s"
        );
    }

    mod injective {
        use proptest::prelude::*;

        use super::*;

        /// Every key a tuple of ids names, tagged with the kind of key.
        fn names(k: &Keys, user: &str, other: &str) -> Vec<String> {
            let (u, j, n, s) = (
                UserId::new(user),
                JobId::new(other),
                NodeId::new(other),
                StrategyId::new(other),
            );
            vec![
                k.job(&j),
                k.job_events(&j),
                k.user_jobs(&u),
                k.user_active(&u),
                k.subscription(&u),
                k.user_keys(&u),
                k.commands(&n),
                k.node_jobs(&n),
                k.node(&n),
                k.node_fenced(&n),
                k.api_key(other),
                k.processing("jobs", &n),
                k.breaker(&u, &s),
            ]
        }

        proptest! {
            /// Two different (user, other id) pairs never share a key name, and no key of one
            /// kind is a key of another kind, however the ids use the separator.
            #[test]
            fn key_names_are_injective(
                a in "[a-z:%{}]{1,6}", b in "[a-z:%{}]{1,6}",
                c in "[a-z:%{}]{1,6}", d in "[a-z:%{}]{1,6}",
            ) {
                let k = Keys::new("P");
                let first = names(&k, &a, &b);
                let second = names(&k, &c, &d);
                for (i, x) in first.iter().enumerate() {
                    for (j, y) in second.iter().enumerate() {
                        if x == y {
                            // Same name: same kind of key, and the ids it is built from agree.
                            prop_assert_eq!(i, j);
                            let user_keyed = [2, 3, 4, 5].contains(&i);
                            // processing (12) and breaker (13) are built from both ids.
                            let other_keyed = !user_keyed && i != 12 && i != 13;
                            if user_keyed { prop_assert_eq!(&a, &c); }
                            if other_keyed { prop_assert_eq!(&b, &d); }
                            if i >= 12 { prop_assert!(a == c && b == d); }
                        }
                    }
                }
            }
        }
    }
}
