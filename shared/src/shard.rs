//! Sharding: which of a fleet's shards a user, a job or an API key lives in.
//!
//! A fleet with `redis.shards = S > 1` keeps its state in S independent parts, each under its
//! own Redis Cluster hash tag (`<prefix>:{<prefix>.<n>}`, [`crate::keys::Keys::shard`]), so
//! that the cluster spreads them over its masters. A user belongs to shard
//! `shard_of(user id)`; their subscription, breakers, API keys and jobs live there, so that
//! every atomic step (admission, claim, heartbeat, end of run, sweep) still touches one slot.
//! Job ids and API key ids are made so that they hash to their user's shard
//! ([`Placement::make`]): a job or a key is found from its id alone.
//!
//! The hash is FNV-1a (64 bits) of the id's bytes, modulo S: stable across versions and
//! platforms, written down here because the shard of every stored id depends on it.

/// The most shards a fleet may have (`redis.shards`).
pub const SHARDS_MAX: u32 = 1024;

/// The shard of `id` in a fleet of `shards` shards.
pub fn shard_of(id: &str, shards: u32) -> usize {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = id
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    (hash % u64::from(shards.max(1))) as usize
}

/// The indices of `ids` grouped by their shard of `shards`, in order within each shard.
pub fn group_by_shard<'a>(
    ids: impl IntoIterator<Item = &'a str>,
    shards: u32,
) -> std::collections::HashMap<usize, Vec<usize>> {
    let mut groups: std::collections::HashMap<usize, Vec<usize>> = Default::default();
    for (i, id) in ids.into_iter().enumerate() {
        groups.entry(shard_of(id, shards)).or_default().push(i);
    }
    groups
}

/// Where a user's new ids must land: the user's shard, out of how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The shard.
    pub shard: usize,
    /// Of this many.
    pub shards: u32,
}

impl Placement {
    /// An unsharded fleet: any id fits.
    pub const ANY: Placement = Placement {
        shard: 0,
        shards: 1,
    };

    /// The placement of `user`'s ids in a fleet of `shards` shards.
    pub fn of_user(user: &str, shards: u32) -> Self {
        Placement {
            shard: shard_of(user, shards),
            shards,
        }
    }

    /// Whether `id` hashes to this placement's shard.
    pub fn fits(&self, id: &str) -> bool {
        shard_of(id, self.shards) == self.shard
    }

    /// A new id from `make` (a generator of random ids) that fits: `make` is called until one
    /// does, on average `shards` times (a few microseconds for UUIDs and 1,024 shards).
    pub fn make(&self, mut make: impl FnMut() -> String) -> String {
        loop {
            let id = make();
            if self.fits(&id) {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fnv1a_and_stable() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c; of "" the offset basis.
        assert_eq!(
            shard_of("a", 1024),
            (0xaf63_dc4c_8601_ec8c_u64 % 1024) as usize
        );
        assert_eq!(shard_of("", 7), (0xcbf2_9ce4_8422_2325_u64 % 7) as usize);
        assert_eq!(shard_of("anything", 1), 0);
    }

    #[test]
    fn users_spread_over_every_shard() {
        let mut counts = [0usize; 16];
        for i in 0..16_000 {
            counts[shard_of(&format!("user-{i}"), 16)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn made_ids_fit_their_users_shard() {
        for user in ["alice", "bob", "u:1"] {
            let p = Placement::of_user(user, 64);
            for _ in 0..20 {
                let id = p.make(|| uuid::Uuid::new_v4().to_string());
                assert_eq!(shard_of(&id, 64), shard_of(user, 64));
            }
        }
        assert!(Placement::ANY.fits("whatever"));
    }
}
