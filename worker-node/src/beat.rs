//! What a heartbeat sends for one runner: only what changed since the last accepted beat.
//!
//! A runner's lease is its node's (the store renews the node, not each runner), so a runner
//! whose report did not change costs the heartbeat nothing. Positions and stats are sent when
//! they differ from the last accepted ones. The saved state (the runner's `account`, from which
//! a later run resumes) changes with every tick of the feed, so it is sent when it changed and
//! either the holdings changed (a fill: positions other than their marks, or stats) or
//! `heartbeat.checkpoint_ms` passed since it was last saved (or since the runner started);
//! hand-backs and ends always carry it. A run resumed after a crash so starts from at most a
//! checkpoint back, never from before its last fill.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use runfleet_shared::ids::JobId;
use runfleet_shared::job::Position;
use runfleet_shared::store::RunnerBeat;
use tokio::time::Instant;

use runfleet_shared::kind::Report;

/// What the store last accepted for one runner, as digests: a node keeps one of these per
/// running runner, and copies of the reports themselves (the saved state above all) cost more
/// memory than the rest of an idle runner. A digest collision (odds 2^-64 per beat) would
/// delay one report to the next change or checkpoint, never send a wrong one.
#[derive(Debug, Default)]
pub struct Sent {
    positions: Option<u64>,
    /// The positions' [`holding`]s.
    holdings: Option<u64>,
    stats: Option<u64>,
    account: Option<u64>,
    /// When the saved state was last accepted.
    account_at: Option<Instant>,
    /// The stats the runner started with, until the first accepted stats: what a fill before
    /// the first beat is told from.
    start_stats: Option<u64>,
}

impl Sent {
    /// Nothing sent yet for a runner that started at `at`: its first checkpoint is due a
    /// checkpoint after its start, not at its first beat. The store holds the state it started
    /// from (none, or the one it resumed), which is what a resume within that time starts
    /// from; and a node that just claimed thousands of runners does not send every one's whole
    /// state in its next heartbeat.
    /// `initial` is the report the runner starts with: a change of its holdings or stats is a
    /// fill, saved at once as ever.
    pub fn started(at: Instant, initial: &Report) -> Self {
        Self {
            account_at: Some(at),
            holdings: Some(holdings(&initial.positions)),
            start_stats: Some(digest(&initial.stats)),
            ..Self::default()
        }
    }

    /// Records that the store accepted `beat`, sent at `at`.
    pub fn accepted(&mut self, beat: &RunnerBeat, at: Instant) {
        if let Some(p) = &beat.positions {
            self.positions = Some(digest(p));
            self.holdings = Some(holdings(p));
        }
        if let Some(s) = &beat.stats {
            self.stats = Some(digest(s));
        }
        if let Some(a) = &beat.account {
            self.account = Some(digest(a.as_str()));
            self.account_at = Some(at);
        }
    }
}

fn digest<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// The fields of a position that only a fill changes (not its mark).
fn holding(p: &Position) -> impl Hash + '_ {
    (
        &p.instrument_name,
        p.side,
        p.amount,
        p.entry_price,
        p.realized_pnl,
    )
}

/// The digest of the positions' [`holding`]s, hashed as a slice of them would be (its length,
/// then each), without collecting them: it runs for every runner on every beat.
fn holdings(positions: &[Position]) -> u64 {
    let mut h = DefaultHasher::new();
    positions.len().hash(&mut h);
    for p in positions {
        holding(p).hash(&mut h);
    }
    h.finish()
}

/// The beat of runner `job` (epoch `epoch`) whose report is now `report`, given what the store
/// last accepted: `None` when nothing is to be sent.
pub fn beat_of(
    job: &JobId,
    epoch: u64,
    sent: &Sent,
    report: &Report,
    now: Instant,
    checkpoint: Duration,
) -> Option<RunnerBeat> {
    let changed = |last: Option<u64>, now: u64| last != Some(now);
    let positions =
        changed(sent.positions, digest(&report.positions)).then(|| report.positions.clone());
    let stats = changed(sent.stats, digest(&report.stats)).then(|| report.stats.clone());
    // Before the first accepted stats, a fill is a change from the stats the runner started
    // with (when known).
    let stats_moved = match sent.stats {
        Some(_) => stats.is_some(),
        None => changed(sent.start_stats, digest(&report.stats)),
    };
    let holdings_changed = stats_moved || changed(sent.holdings, holdings(&report.positions));
    let due = sent
        .account_at
        .is_none_or(|at| now.saturating_duration_since(at) >= checkpoint);
    let account = report
        .state
        .as_ref()
        .filter(|a| (holdings_changed || due) && changed(sent.account, digest(a.as_str())))
        .cloned();
    if positions.is_none() && stats.is_none() && account.is_none() {
        return None;
    }
    Some(RunnerBeat {
        job_id: job.clone(),
        epoch,
        positions,
        stats,
        account,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use runfleet_shared::job::{Side, Stats};
    use runfleet_shared::kind::SavedState;
    use rust_decimal::Decimal;
    use serde_json::json;

    const CHECKPOINT: Duration = Duration::from_secs(30);

    fn position(mark: i64) -> Position {
        Position {
            instrument_name: "BTC-PERPETUAL".into(),
            side: Side::Long,
            amount: Decimal::from(10),
            entry_price: Decimal::from(100),
            mark_price: Decimal::from(mark),
            unrealized_pnl: Decimal::from(mark - 100),
            realized_pnl: Decimal::ZERO,
            currency: "BTC".into(),
        }
    }

    fn report(positions: Vec<Position>, trades: u64, tick: u64) -> Report {
        Report {
            positions,
            stats: Stats {
                total_trades: trades,
                ..Stats::default()
            },
            state: Some(state(tick)),
        }
    }

    fn state(tick: u64) -> SavedState {
        SavedState::of(&json!({ "tick": tick })).unwrap()
    }

    /// Sends what `beat_of` decides and records it as accepted.
    fn send(sent: &mut Sent, r: &Report, now: Instant) -> Option<RunnerBeat> {
        let beat = beat_of(&JobId::new("j"), 1, sent, r, now, CHECKPOINT)?;
        sent.accepted(&beat, now);
        Some(beat)
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_runner_sends_nothing_but_its_checkpoints() {
        let mut sent = Sent::default();
        let first = send(&mut sent, &report(vec![], 0, 0), Instant::now()).unwrap();
        assert!(first.positions.is_some() && first.stats.is_some() && first.account.is_some());
        // The feed moves (the saved state changes) but nothing is held: no beat until the
        // checkpoint is due.
        for tick in 1..6 {
            tokio::time::advance(Duration::from_secs(5)).await;
            assert!(send(&mut sent, &report(vec![], 0, tick), Instant::now()).is_none());
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        let due = send(&mut sent, &report(vec![], 0, 6), Instant::now()).unwrap();
        assert_eq!(due.account, Some(state(6)));
        assert!(due.positions.is_none() && due.stats.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_runners_first_checkpoint_is_due_a_checkpoint_after_its_start() {
        let mut sent = Sent::started(Instant::now(), &report(vec![], 0, 0));
        tokio::time::advance(Duration::from_secs(5)).await;
        let first = send(&mut sent, &report(vec![], 0, 1), Instant::now()).unwrap();
        assert!(first.positions.is_some() && first.stats.is_some());
        assert!(first.account.is_none(), "not due yet: {first:?}");
        for tick in 2..6 {
            tokio::time::advance(Duration::from_secs(5)).await;
            assert!(send(&mut sent, &report(vec![], 0, tick), Instant::now()).is_none());
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        let due = send(&mut sent, &report(vec![], 0, 6), Instant::now()).unwrap();
        assert_eq!(due.account, Some(state(6)));
        // A fill is saved at once, whenever it comes.
        let mut sent = Sent::started(Instant::now(), &report(vec![], 0, 0));
        tokio::time::advance(Duration::from_secs(5)).await;
        let filled = send(&mut sent, &report(vec![], 1, 1), Instant::now()).unwrap();
        assert_eq!(filled.account, Some(state(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_moving_mark_sends_positions_and_a_fill_sends_the_state_at_once() {
        let mut sent = Sent::default();
        send(
            &mut sent,
            &report(vec![position(100)], 0, 0),
            Instant::now(),
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        let marked = send(
            &mut sent,
            &report(vec![position(101)], 0, 1),
            Instant::now(),
        )
        .unwrap();
        assert!(marked.positions.is_some());
        assert!(marked.account.is_none(), "a new mark is not a fill");
        tokio::time::advance(Duration::from_secs(5)).await;
        let filled = send(&mut sent, &report(vec![], 1, 2), Instant::now()).unwrap();
        assert!(filled.positions.is_some() && filled.stats.is_some());
        assert_eq!(filled.account, Some(state(2)), "saved with the fill");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_or_failed_beat_is_sent_again() {
        let sent = Sent::default();
        let r = report(vec![], 0, 0);
        assert!(beat_of(&JobId::new("j"), 1, &sent, &r, Instant::now(), CHECKPOINT).is_some());
        // Not recorded as accepted: the next beat carries it again.
        assert!(beat_of(&JobId::new("j"), 1, &sent, &r, Instant::now(), CHECKPOINT).is_some());
    }
}
