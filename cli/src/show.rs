//! Human output: tables (comfy-table), money as money, times as ages. The `--json` output is
//! not here: it is the API's own answers, printed as they were read.

use std::time::{SystemTime, UNIX_EPOCH};

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, CellAlignment, ContentArrangement, Table};
use runfleet_client::api::{
    EntitlementGranted, FleetStatus, IssuedKey, KeyList, Nodes, RunnerView, UserRunners,
};
use runfleet_client::{JobRecord, Position, RunnerEvent};
use rust_decimal::Decimal;
use rust_decimal::prelude::RoundingStrategy;

/// A table in the house style, as wide as its content.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(Cell::new));
    t
}

fn right(text: impl ToString) -> Cell {
    Cell::new(text).set_alignment(CellAlignment::Right)
}

/// Money as money: fiat with its symbol, thousands separators and cents (`$1,234.50`,
/// `-€3.10`); a crypto currency with up to 8 decimals and its code (`0.00002399 BTC`).
pub fn money(amount: Decimal, currency: &str) -> String {
    let symbol = match currency {
        "USD" => Some("$"),
        "EUR" => Some("€"),
        "GBP" => Some("£"),
        _ => None,
    };
    let sign = if amount.is_sign_negative() && !amount.is_zero() {
        "-"
    } else {
        ""
    };
    let abs = amount.abs();
    match symbol {
        Some(symbol) => {
            let cents = abs.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
            let text = format!("{cents:.2}");
            let (whole, frac) = text.split_once('.').unwrap_or((&text, "00"));
            format!("{sign}{symbol}{}.{frac}", thousands(whole))
        }
        None => {
            let d = abs
                .round_dp_with_strategy(8, RoundingStrategy::MidpointAwayFromZero)
                .normalize();
            let unit = if currency.is_empty() { "" } else { " " };
            format!("{sign}{d}{unit}{currency}")
        }
    }
}

fn thousands(digits: &str) -> String {
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Milliseconds since the Unix epoch, now (this machine's clock).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How long ago `at_ms` was, as people say it (`3s ago`, `5m ago`).
pub fn ago(at_ms: u64, now_ms: u64) -> String {
    let s = now_ms.saturating_sub(at_ms) / 1000;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

/// How long until `at_ms` (`in 29d`), or how long ago it was.
pub fn until(at_ms: u64, now_ms: u64) -> String {
    if at_ms < now_ms {
        return ago(at_ms, now_ms);
    }
    ago(now_ms, at_ms).replace(" ago", " from now")
}

/// A user's runners.
pub fn user_runners(answer: &UserRunners<'_>) -> String {
    let now = now_ms();
    let mut t = table(&[
        "JOB",
        "STRATEGY",
        "TYPE",
        "STATUS",
        "NODE",
        "TRADES",
        "PNL",
        "POSITIONS",
        "CREATED",
    ]);
    for RunnerView(r) in &answer.workers {
        t.add_row(vec![
            Cell::new(&r.job_id),
            Cell::new(&r.strategy_id),
            Cell::new(&r.config.kind),
            Cell::new(r.status.as_str()),
            Cell::new(r.node_id.as_ref().map_or("-", |n| n.as_str())),
            right(r.stats.total_trades),
            right(money(r.stats.total_pnl, &r.stats.currency)),
            right(r.positions.len()),
            Cell::new(ago(r.created_at, now)),
        ]);
    }
    let c = answer.queue_stats;
    format!(
        "{t}\nuser {}: {} runners, {} running, {} queued, {} failed",
        answer.user_id, c.total_workers, c.running_workers, c.queued_jobs, c.failed_jobs
    )
}

/// The fleet-wide load (`status` without a user).
pub fn fleet(status: &FleetStatus) -> String {
    let q = status.queue_stats;
    let n = status.nodes;
    let mut t = table(&[
        "RUNNING",
        "QUEUED",
        "RESTARTING",
        "HOLDING SLOTS",
        "NODES",
        "CAPACITY",
    ]);
    t.add_row(vec![
        right(q.running_workers),
        right(q.queued_jobs),
        right(q.restarting_jobs),
        right(q.total_workers),
        right(n.alive),
        right(format!("{}/{}", n.runners, n.capacity)),
    ]);
    t.to_string()
}

/// One runner in detail: its record, positions and stats.
pub fn runner(r: &JobRecord) -> String {
    let now = now_ms();
    let mut t = table(&["FIELD", "VALUE"]);
    let mut row = |k: &str, v: String| {
        t.add_row(vec![Cell::new(k), Cell::new(v)]);
    };
    row("job", r.job_id.to_string());
    row("user", r.user_id.to_string());
    row("strategy", format!("{} ({})", r.strategy_id, r.config.kind));
    row("broker", r.broker_id.to_string());
    row("status", r.status.as_str().to_owned());
    row(
        "node",
        r.node_id.as_ref().map_or("-".into(), |n| n.to_string()),
    );
    row("epoch", r.epoch.to_string());
    row("restarts", r.restarts.to_string());
    row("created", ago(r.created_at, now));
    if let Some(at) = r.last_heartbeat_at {
        row("last heartbeat", ago(at, now));
    }
    if let Some(mode) = r.stop_mode {
        row("stop mode", mode.as_str().to_owned());
    }
    if let Some(n) = r.flattened_positions {
        row("flattened positions", n.to_string());
    }
    if let Some(e) = &r.error {
        row("error", e.clone());
    }
    row("instruments", r.config.instruments.join(", "));
    let s = &r.stats;
    let mut stats = table(&[
        "TRADES",
        "WON",
        "LOST",
        "WIN RATE",
        "PNL",
        "FEES",
        "MAX DRAWDOWN",
        "PROFIT FACTOR",
    ]);
    stats.add_row(vec![
        right(s.total_trades),
        right(s.winning_trades),
        right(s.losing_trades),
        right(format!("{}%", s.win_rate.normalize())),
        right(money(s.total_pnl, &s.currency)),
        right(money(s.fees, &s.currency)),
        right(money(s.max_drawdown, &s.currency)),
        right(
            s.profit_factor
                .map_or("-".into(), |p| p.normalize().to_string()),
        ),
    ]);
    format!(
        "{t}\n\nstats\n{stats}\n\npositions\n{}",
        positions(&r.positions)
    )
}

/// Open positions.
pub fn positions(positions: &[Position]) -> String {
    if positions.is_empty() {
        return "(none)".into();
    }
    let mut t = table(&[
        "INSTRUMENT",
        "SIDE",
        "AMOUNT",
        "ENTRY",
        "MARK",
        "UNREALIZED",
        "REALIZED",
    ]);
    for p in positions {
        t.add_row(vec![
            Cell::new(&p.instrument_name),
            Cell::new(format!("{:?}", p.side).to_lowercase()),
            right(p.amount.normalize()),
            right(p.entry_price.normalize()),
            right(p.mark_price.normalize()),
            right(money(p.unrealized_pnl, &p.currency)),
            right(money(p.realized_pnl, &p.currency)),
        ]);
    }
    t.to_string()
}

/// A runner's events, oldest first.
pub fn events(events: &[RunnerEvent]) -> String {
    let now = now_ms();
    let mut t = table(&["ID", "WHEN", "TYPE", "JOB", "EPOCH", "NODE", "REASON"]);
    for e in events {
        t.add_row(vec![
            Cell::new(&e.id),
            Cell::new(ago(e.at, now)),
            Cell::new(&e.kind),
            Cell::new(&e.job),
            right(e.epoch),
            Cell::new(&e.node),
            Cell::new(&e.reason),
        ]);
    }
    t.to_string()
}

/// One live event, one line.
pub fn event_line(e: &RunnerEvent) -> String {
    let mut line = format!(
        "{} {:<17} {} user={} epoch={}",
        e.id, e.kind, e.job, e.user, e.epoch
    );
    if !e.node.is_empty() {
        line.push_str(&format!(" node={}", e.node));
    }
    if !e.reason.is_empty() {
        line.push_str(&format!(" reason={:?}", e.reason));
    }
    line
}

/// The live nodes.
pub fn nodes(answer: &Nodes) -> String {
    let now = now_ms();
    let mut t = table(&[
        "NODE",
        "RUNNERS",
        "CAPACITY",
        "IN USE",
        "LAST HEARTBEAT",
        "STARTED",
    ]);
    for n in &answer.nodes {
        t.add_row(vec![
            Cell::new(&n.node_id),
            right(n.runners),
            right(n.capacity),
            Cell::new(bar(n.runners, n.capacity, 10)),
            Cell::new(n.last_heartbeat_at.map_or("-".into(), |at| ago(at, now))),
            Cell::new(ago(n.started_at, now)),
        ]);
    }
    format!(
        "{t}\n{} nodes, {} queued",
        answer.nodes.len(),
        answer.queued_jobs
    )
}

/// `used` of `capacity` as a bar `width` cells wide.
pub fn bar(used: u32, capacity: u32, width: usize) -> String {
    let filled = if capacity == 0 {
        0
    } else {
        ((used as usize * width).div_ceil(capacity as usize)).min(width)
    };
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

/// An entitlement granted.
pub fn granted(g: &EntitlementGranted) -> String {
    format!(
        "user {} is now {} (up to {} runners), ends {}",
        g.user_id,
        g.tier.as_str(),
        g.max_workers,
        until(g.expires_at, now_ms())
    )
}

/// A key issued: shown this once.
pub fn issued(k: &IssuedKey) -> String {
    format!(
        "key {} issued for user {} (shown this once; keep it):\n{}",
        k.key_id, k.user_id, k.api_key
    )
}

/// A user's keys.
pub fn keys(list: &KeyList) -> String {
    let now = now_ms();
    let mut t = table(&["KEY ID", "CREATED"]);
    for k in &list.keys {
        t.add_row(vec![
            Cell::new(&k.key_id),
            Cell::new(ago(k.created_at, now)),
        ]);
    }
    t.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn money_is_printed_as_money() {
        let d = |s| Decimal::from_str(s).unwrap();
        assert_eq!(money(d("1234.5"), "USD"), "$1,234.50");
        assert_eq!(money(d("-3.105"), "EUR"), "-€3.11");
        assert_eq!(money(d("1234567"), "USD"), "$1,234,567.00");
        assert_eq!(money(d("-0.000023990"), "BTC"), "-0.00002399 BTC");
        assert_eq!(money(d("0"), "BTC"), "0 BTC");
    }

    #[test]
    fn bars_fill_with_use() {
        assert_eq!(bar(0, 10, 4), "░░░░");
        assert_eq!(bar(5, 10, 4), "██░░");
        assert_eq!(bar(10, 10, 4), "████");
        assert_eq!(bar(1, 0, 2), "░░");
    }
}
