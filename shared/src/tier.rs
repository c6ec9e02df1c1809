//! Entitlement tiers: how many runners a user may have at once, and when a paid tier lapses.
//!
//! The limit check itself runs inside the store's admission step (one atomic operation), so
//! this module only defines the vocabulary and the rule "an expired tier is free".

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Subscription tier; limits concurrent runners (defaults 1 / 3 / 10 / 50).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// The tier every user has without a subscription, and falls back to when one expires.
    #[default]
    Free,
    /// Basic subscription.
    Basic,
    /// Pro subscription.
    Pro,
    /// Enterprise subscription.
    Enterprise,
}

impl Tier {
    /// Every tier, cheapest first.
    pub const ALL: [Tier; 4] = [Tier::Free, Tier::Basic, Tier::Pro, Tier::Enterprise];

    /// The tier's name as used in the API and in Redis.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Basic => "basic",
            Tier::Pro => "pro",
            Tier::Enterprise => "enterprise",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown tier '{s}' (expected free, basic, pro or enterprise)"))
    }
}

/// Concurrent-runner limits per tier (configurable; defaults 1 / 3 / 10 / 50).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierLimits {
    /// Runners a free user may have.
    pub free: u32,
    /// Runners a basic user may have.
    pub basic: u32,
    /// Runners a pro user may have.
    pub pro: u32,
    /// Runners an enterprise user may have.
    pub enterprise: u32,
}

impl Default for TierLimits {
    fn default() -> Self {
        Self {
            free: 1,
            basic: 3,
            pro: 10,
            enterprise: 50,
        }
    }
}

impl TierLimits {
    /// The limit for one tier.
    pub fn limit(&self, tier: Tier) -> u32 {
        match tier {
            Tier::Free => self.free,
            Tier::Basic => self.basic,
            Tier::Pro => self.pro,
            Tier::Enterprise => self.enterprise,
        }
    }
}

/// A day in milliseconds.
pub const DAY_MS: u64 = 24 * 3600 * 1000;

/// A user's stored subscription: a tier until a moment in store time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    /// The tier paid for.
    pub tier: Tier,
    /// When it lapses, in milliseconds since the Unix epoch of the store's clock.
    pub expires_at_ms: u64,
}

impl Subscription {
    /// `tier` for `days` from `now_ms` (store clock).
    pub fn for_days(tier: Tier, now_ms: u64, days: u32) -> Self {
        Self {
            tier,
            expires_at_ms: now_ms + u64::from(days) * DAY_MS,
        }
    }

    /// The tier in force at `now_ms`: the subscribed tier until it expires, then free.
    pub fn effective_tier(subscription: Option<&Subscription>, now_ms: u64) -> Tier {
        match subscription {
            Some(s) if now_ms < s.expires_at_ms => s.tier,
            _ => Tier::Free,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_subscription_falls_back_to_free() {
        let s = Subscription {
            tier: Tier::Pro,
            expires_at_ms: 1_000,
        };
        assert_eq!(Subscription::effective_tier(Some(&s), 999), Tier::Pro);
        assert_eq!(Subscription::effective_tier(Some(&s), 1_000), Tier::Free);
        assert_eq!(Subscription::effective_tier(None, 0), Tier::Free);
    }

    #[test]
    fn default_limits_match_the_tiers() {
        let l = TierLimits::default();
        let limits: Vec<u32> = Tier::ALL.iter().map(|t| l.limit(*t)).collect();
        assert_eq!(limits, vec![1, 3, 10, 50]);
    }

    #[test]
    fn tiers_parse_from_their_names() {
        for t in Tier::ALL {
            assert_eq!(t.as_str().parse::<Tier>().unwrap(), t);
        }
        assert!("gold".parse::<Tier>().is_err());
    }
}
