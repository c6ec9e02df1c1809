//! What held Redis: the private Redis' `SLOWLOG` (every command or script that ran longer than
//! [`SLOWER_THAN_US`]), read and reset at the end of each phase, with runfleet's scripts named
//! (an `EVALSHA` is matched to the script whose SHA1 it calls, an `FCALL` named by its function). Printed after the table, so
//! that a stall in it comes with the commands that made it.

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::Value;

use crate::redis_server::BenchRedis;

/// Commands slower than this (µs) are logged: well under the 5 ms stall goal.
pub const SLOWER_THAN_US: u64 = 2_000;

/// Entries kept by Redis between two reads (a phase); the oldest fall off past it.
pub const MAX_LEN: u64 = 1_024;

/// runfleet's scripts as their callers load them: the store's with the shared prelude
/// (`shared/src/store/redis.rs`' `script!`), the queue's alone.
static SCRIPTS: LazyLock<HashMap<String, &'static str>> = LazyLock::new(|| {
    let prelude = runfleet_shared::store::SCRIPT_PRELUDE;
    macro_rules! store {
        ($($file:literal),*) => {
            [$((
                redis::Script::new(&format!(
                    "{}\n{}",
                    prelude,
                    include_str!(concat!("../../shared/src/scripts/", $file))
                ))
                .get_hash()
                .to_owned(),
                $file,
            )),*]
        };
    }
    macro_rules! queue {
        ($($file:literal),*) => {
            [$((
                redis::Script::new(include_str!(concat!("../../shared/src/scripts/", $file)))
                    .get_hash()
                    .to_owned(),
                $file,
            )),*]
        };
    }
    store!(
        "store_add_key.lua",
        "store_admit.lua",
        "store_admit_many.lua",
        "store_claim.lua",
        "store_fail_lost.lua",
        "store_finish.lua",
        "store_gauges.lua",
        "store_hand_back.lua",
        "store_promote.lua",
        "store_reconcile.lua",
        "store_renew.lua",
        "store_revoke_key.lua",
        "store_stop.lua",
        "store_sweep.lua"
    )
    .into_iter()
    .chain(queue!(
        "queue_claim.lua",
        "queue_recover.lua",
        "queue_release.lua"
    ))
    .collect()
});

/// One slow command of a phase.
#[derive(Debug, Clone)]
pub struct Slow {
    /// The phase it ran in (`starts`, `drain`, `steady`...).
    pub phase: &'static str,
    /// The command, or for a script call the script's file (runfleet's) or its SHA1's start.
    pub name: String,
    /// How long it held Redis (µs).
    pub micros: u64,
    /// Its argument count (a claim's or heartbeat's size shows here).
    pub args: usize,
}

/// The name of the command `argv` (as SLOWLOG reports it: its first arguments).
fn name_of(argv: &[String]) -> String {
    let Some(cmd) = argv.first() else {
        return "?".into();
    };
    let cmd = cmd.to_ascii_uppercase();
    match (cmd.as_str(), argv.get(1)) {
        ("EVALSHA", Some(sha)) => match SCRIPTS.get(sha.as_str()) {
            Some(file) => (*file).to_owned(),
            None => format!("EVALSHA {}", &sha[..sha.len().min(8)]),
        },
        // runfleet's Function library: `runfleet_<12 hex digits>_<SCRIPT>`.
        ("FCALL", Some(f)) => match f.strip_prefix("runfleet_").and_then(|r| r.get(13..)) {
            Some(script) => format!("FCALL {script}"),
            None => format!("FCALL {f}"),
        },
        ("EVAL", _) => "EVAL".into(),
        _ => cmd,
    }
}

fn text(v: &Value) -> Option<String> {
    redis::from_redis_value(v.clone()).ok()
}

/// Turns on the slow log of `redis` (also clearing it).
pub async fn enable(redis: &BenchRedis) -> anyhow::Result<()> {
    let mut c = redis.conn().await?;
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(SLOWER_THAN_US)
        .arg("slowlog-max-len")
        .arg(MAX_LEN)
        .query_async(&mut c)
        .await?;
    take(redis, "before").await.map(drop)
}

/// The slow commands since the last call (or [`enable`]), as of `phase`; clears the log.
pub async fn take(redis: &BenchRedis, phase: &'static str) -> anyhow::Result<Vec<Slow>> {
    let mut c = redis.conn().await?;
    let entries: Vec<Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(MAX_LEN)
        .query_async(&mut c)
        .await?;
    let () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async(&mut c)
        .await?;
    // Each entry: id, unix time, µs, [argv...] (at most 32, the last one a "... (n more)"),
    // client address, client name.
    Ok(entries
        .iter()
        .filter_map(|e| {
            let Value::Array(fields) = e else { return None };
            let micros = match fields.get(2)? {
                Value::Int(us) => *us as u64,
                _ => return None,
            };
            let Value::Array(argv) = fields.get(3)? else {
                return None;
            };
            let argv: Vec<String> = argv.iter().filter_map(text).collect();
            let args = match argv.last().and_then(|l| more(l)) {
                Some(more) => argv.len() - 1 + more,
                None => argv.len(),
            };
            Some(Slow {
                phase,
                name: name_of(&argv),
                micros,
                args,
            })
        })
        .collect())
}

/// The count in SLOWLOG's last argument when it cut the list: `... (12 more arguments)`.
fn more(last: &str) -> Option<usize> {
    last.strip_prefix("... (")?
        .strip_suffix(" more arguments)")?
        .parse()
        .ok()
}

/// `slow` grouped by command and phase, the longest first, as lines of a markdown list: how
/// many ran above the threshold, the longest, and the arguments of the longest.
pub fn report(system: &str, slow: &[Slow]) -> String {
    if slow.is_empty() {
        return format!("{system}: no command above {SLOWER_THAN_US} µs\n");
    }
    let mut groups: Vec<(&str, &str, Vec<&Slow>)> = Vec::new();
    for s in slow {
        match groups
            .iter_mut()
            .find(|(name, phase, _)| *name == s.name && *phase == s.phase)
        {
            Some((_, _, v)) => v.push(s),
            None => groups.push((&s.name, s.phase, vec![s])),
        }
    }
    let longest = |v: &[&Slow]| v.iter().map(|s| s.micros).max().unwrap_or(0);
    groups.sort_by_key(|(_, _, v)| std::cmp::Reverse(longest(v)));
    let mut out = format!(
        "{system}: {} commands above {SLOWER_THAN_US} µs:\n",
        slow.len()
    );
    for (name, phase, v) in groups {
        let top = v.iter().max_by_key(|s| s.micros).expect("a group has one");
        out.push_str(&format!(
            "- `{name}` in {phase}: {} times, longest {} µs ({} arguments)\n",
            v.len(),
            top.micros,
            top.args
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_named_by_their_sha() {
        let claim = redis::Script::new(&format!(
            "{}\n{}",
            runfleet_shared::store::SCRIPT_PRELUDE,
            include_str!("../../shared/src/scripts/store_claim.lua")
        ));
        let argv = vec!["evalsha".to_owned(), claim.get_hash().to_owned()];
        assert_eq!(name_of(&argv), "store_claim.lua");
        assert_eq!(name_of(&["ping".to_owned()]), "PING");
        let fcall = [
            "fcall".to_owned(),
            "runfleet_0123456789ab_HAND_BACK".to_owned(),
        ];
        assert_eq!(name_of(&fcall), "FCALL HAND_BACK");
        assert_eq!(
            name_of(&["EVALSHA".to_owned(), "0123456789abcdef".to_owned()]),
            "EVALSHA 01234567"
        );
        assert_eq!(more("... (12 more arguments)"), Some(12));
    }
}
