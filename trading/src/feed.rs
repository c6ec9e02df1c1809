//! Market feeds: where prices come from. A feed advances in steps; each step gives one
//! [`Bar`] (a candle) per instrument priced at that step, and says how long to wait before the
//! next one.
//!
//! - [`SimulatedFeed`]: a seeded random walk per instrument. Step `n` of an instrument moves its
//!   price by a whole number of basis points in [−20, +20] drawn from a generator seeded with
//!   (seed, instrument, n), rounded to the price step: the path is a pure function of the seed,
//!   so a resumed runner continues it exactly. Each step is one candle of the strategy's
//!   timeframe (simulated time runs at one candle per `market.tick_ms`).
//! - [`ReplayFeed`]: candles from CSV files (`,Open,High,Low,Close,Volume`, as in
//!   `../shared/data`), merged by time across instruments, paced by `market.replay_speed`. A
//!   file that is not a regular series of candles is refused with its line ([`parse_csv`]).
//!   Each file is read and parsed once per node, on a blocking thread, and shared by the
//!   node's runners ([`ReplayCache`]).
//!
//! [`CandleBuilder`] turns a feed's bars into candles of a strategy's timeframe.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::catalog::Instrument;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use runfleet_shared::config::{FeedKind, MarketSettings};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A price candle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Candle {
    /// When it opens, ms since the Unix epoch (simulated feeds start at 0).
    pub start_ms: i64,
    /// How long it lasts, ms.
    pub period_ms: i64,
    /// First price.
    pub open: Decimal,
    /// Highest price.
    pub high: Decimal,
    /// Lowest price.
    pub low: Decimal,
    /// Last price: what positions are marked at.
    pub close: Decimal,
}

/// A candle of one instrument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// The instrument.
    pub instrument: &'static Instrument,
    /// Its candle.
    pub candle: Candle,
}

/// Why a feed could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The replay file could not be read.
    #[error("replay file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A replay file is not a series of candles.
    #[error("replay file {path}: {source}")]
    Csv {
        /// The file.
        path: String,
        /// What is wrong, and on which line.
        source: CsvError,
    },
    /// The saved position of a feed does not fit it.
    #[error("saved feed state: {0}")]
    State(String),
}

/// Why candle CSV text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsvError {
    /// Not one candle row: an empty file, or a header alone. Played, it would run a runner
    /// that never sees a price.
    #[error("no candle rows (the file is empty or has only a header)")]
    Empty,
    /// A line that is not a candle, or not in its place.
    #[error("line {line}: {reason}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// A source of prices.
pub trait MarketFeed: Send + fmt::Debug {
    /// How long to wait before the next step; `None` once the feed has ended.
    fn pace(&self) -> Option<Duration>;
    /// The next step's bars; `None` once the feed has ended.
    fn next_bars(&mut self) -> Option<Vec<Bar>>;
    /// Where the feed is, to resume it with [`build`].
    fn state(&self) -> Value;
}

/// The feed `market` selects, for `instruments`, each step one candle of `period_ms` (the
/// simulated feed), resumed from `saved` (a [`MarketFeed::state`]) when it is of the same kind.
/// A replay's files come from `replays`, the node's cache.
pub async fn build(
    market: &MarketSettings,
    instruments: &[&'static Instrument],
    seed: u64,
    period_ms: i64,
    saved: Option<&Value>,
    replays: &ReplayCache,
) -> Result<Box<dyn MarketFeed>, FeedError> {
    let saved = saved.filter(|s| {
        s.get("kind").and_then(Value::as_str)
            == Some(match market.feed {
                FeedKind::Simulated => "simulated",
                FeedKind::Replay => "replay",
            })
    });
    Ok(match market.feed {
        FeedKind::Simulated => {
            let mut feed = SimulatedFeed::new(
                instruments,
                seed,
                period_ms,
                Duration::from_millis(market.tick_ms),
            );
            if let Some(s) = saved {
                feed.restore(s)?;
            }
            Box::new(feed)
        }
        FeedKind::Replay => {
            let mut feed = replays
                .feed(&market.replay_file, instruments, market.replay_speed)
                .await?;
            if let Some(s) = saved {
                feed.restore(s)?;
            }
            Box::new(feed)
        }
    })
}

/// A seeded random walk per instrument.
#[derive(Debug, Clone)]
pub struct SimulatedFeed {
    instruments: Vec<&'static Instrument>,
    seed: u64,
    step: u64,
    prices: Vec<Decimal>,
    period_ms: i64,
    tick: Duration,
}

impl SimulatedFeed {
    /// A walk from each instrument's simulated start price, one step every `tick`, each step a
    /// candle of `period_ms`.
    pub fn new(
        instruments: &[&'static Instrument],
        seed: u64,
        period_ms: i64,
        tick: Duration,
    ) -> Self {
        Self {
            instruments: instruments.to_vec(),
            seed,
            step: 0,
            prices: instruments.iter().map(|i| i.start_price()).collect(),
            period_ms: period_ms.max(1),
            tick,
        }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    fn restore(&mut self, saved: &Value) -> Result<(), FeedError> {
        let bad = |what: &str| FeedError::State(format!("simulated feed: {what}"));
        self.step = saved["step"].as_u64().ok_or_else(|| bad("no step"))?;
        for (i, instrument) in self.instruments.iter().enumerate() {
            if let Some(p) = saved["prices"].get(instrument.name) {
                self.prices[i] = serde_json::from_value::<Decimal>(p.clone())
                    .map_err(|e| bad(&e.to_string()))?;
            }
        }
        Ok(())
    }
}

/// A 64-bit mix of the step's coordinates (SplitMix64 finalizer over FNV-1a of the name).
fn step_seed(seed: u64, instrument: &str, step: u64) -> u64 {
    let name = instrument.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut z = seed ^ name.rotate_left(17) ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl MarketFeed for SimulatedFeed {
    fn pace(&self) -> Option<Duration> {
        Some(self.tick)
    }

    fn next_bars(&mut self) -> Option<Vec<Bar>> {
        let start_ms = self.step as i64 * self.period_ms;
        self.step += 1;
        let bars = self
            .instruments
            .iter()
            .zip(self.prices.iter_mut())
            .map(|(instrument, price)| {
                let bps: i64 =
                    StdRng::seed_from_u64(step_seed(self.seed, instrument.name, self.step))
                        .random_range(-20..=20);
                let open = *price;
                let moved = open * Decimal::from(10_000 + bps) / Decimal::from(10_000);
                let close = ((moved / instrument.price_step).round() * instrument.price_step)
                    .max(instrument.price_step)
                    .normalize();
                *price = close;
                Bar {
                    instrument,
                    candle: Candle {
                        start_ms,
                        period_ms: self.period_ms,
                        open,
                        high: open.max(close),
                        low: open.min(close),
                        close,
                    },
                }
            })
            .collect();
        Some(bars)
    }

    fn state(&self) -> Value {
        let prices: BTreeMap<&str, String> = self
            .instruments
            .iter()
            .zip(&self.prices)
            .map(|(i, p)| (i.name, p.to_string()))
            .collect();
        json!({ "kind": "simulated", "step": self.step, "prices": prices })
    }
}

#[derive(Debug, Clone)]
struct Series {
    instrument: &'static Instrument,
    rows: Arc<Vec<Candle>>,
    next: usize,
}

/// Candles played from CSV files, merged by time.
#[derive(Debug, Clone)]
pub struct ReplayFeed {
    series: Vec<Series>,
    speed: u64,
    last_ms: Option<i64>,
}

impl ReplayFeed {
    /// Plays `rows` for each instrument (`speed` as in `market.replay_speed`).
    pub fn new(series: Vec<(&'static Instrument, Arc<Vec<Candle>>)>, speed: u64) -> Self {
        Self {
            series: series
                .into_iter()
                .map(|(instrument, rows)| Series {
                    instrument,
                    rows,
                    next: 0,
                })
                .collect(),
            speed,
            last_ms: None,
        }
    }

    /// Rows still to play, over every instrument.
    pub fn remaining(&self) -> usize {
        self.series.iter().map(|s| s.rows.len() - s.next).sum()
    }

    fn next_time(&self) -> Option<i64> {
        self.series
            .iter()
            .filter_map(|s| s.rows.get(s.next).map(|c| c.start_ms))
            .min()
    }

    fn restore(&mut self, saved: &Value) -> Result<(), FeedError> {
        for s in &mut self.series {
            if let Some(n) = saved["next"].get(s.instrument.name) {
                let n = n
                    .as_u64()
                    .filter(|n| *n as usize <= s.rows.len())
                    .ok_or_else(|| {
                        FeedError::State(format!("replay position {n} of {}", s.instrument.name))
                    })?;
                s.next = n as usize;
            }
        }
        self.last_ms = saved["lastMs"].as_i64();
        Ok(())
    }
}

impl MarketFeed for ReplayFeed {
    fn pace(&self) -> Option<Duration> {
        let next = self.next_time()?;
        if self.speed == 0 {
            return Some(Duration::ZERO);
        }
        let gap_ms = self.last_ms.map_or(0, |last| (next - last).max(0)) as u64;
        Some(Duration::from_micros(
            gap_ms.saturating_mul(1_000) / self.speed,
        ))
    }

    fn next_bars(&mut self) -> Option<Vec<Bar>> {
        let t = self.next_time()?;
        self.last_ms = Some(t);
        let mut bars = Vec::new();
        for s in &mut self.series {
            if let Some(c) = s.rows.get(s.next).filter(|c| c.start_ms == t) {
                bars.push(Bar {
                    instrument: s.instrument,
                    candle: *c,
                });
                s.next += 1;
            }
        }
        Some(bars)
    }

    fn state(&self) -> Value {
        let next: BTreeMap<&str, usize> = self
            .series
            .iter()
            .map(|s| (s.instrument.name, s.next))
            .collect();
        json!({ "kind": "replay", "next": next, "lastMs": self.last_ms })
    }
}

/// One file's candles, once loaded (or being loaded).
type Loading = Arc<tokio::sync::OnceCell<Arc<Vec<Candle>>>>;

/// Replay files read and parsed once per node, shared by its runners (cheap to clone; clones
/// share the cache). A file is read on a blocking thread (never on the async workers) the first
/// time a runner needs it; runners starting meanwhile wait for that one read. A file that
/// cannot be loaded is not remembered, so the next runner tries again. Files are not watched:
/// a node sees a changed file after a restart.
#[derive(Debug, Clone, Default)]
pub struct ReplayCache {
    files: Arc<Mutex<HashMap<String, Loading>>>,
    reads: Arc<AtomicUsize>,
}

impl ReplayCache {
    /// The candles of `file`, read and parsed on first use.
    pub async fn candles(&self, file: &str) -> Result<Arc<Vec<Candle>>, FeedError> {
        let cell = {
            // Held for a map lookup only, never across an await.
            let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
            files.entry(file.to_owned()).or_default().clone()
        };
        let load = || async {
            self.reads.fetch_add(1, Ordering::Relaxed);
            let path = file.to_owned();
            let loaded = tokio::task::spawn_blocking(move || load_csv(Path::new(&path))).await;
            match loaded {
                Ok(rows) => rows.map(Arc::new),
                Err(e) => Err(FeedError::Read {
                    path: file.to_owned(),
                    source: std::io::Error::other(e),
                }),
            }
        };
        cell.get_or_try_init(load).await.cloned()
    }

    /// A replay of `path` for each instrument; `{index}` in it is replaced by the instrument's
    /// price index.
    pub async fn feed(
        &self,
        path: &str,
        instruments: &[&'static Instrument],
        speed: u64,
    ) -> Result<ReplayFeed, FeedError> {
        let mut series = Vec::with_capacity(instruments.len());
        for instrument in instruments {
            let file = path.replace("{index}", instrument.index);
            series.push((*instrument, self.candles(&file).await?));
        }
        Ok(ReplayFeed::new(series, speed))
    }

    /// How many times a file was read (and parsed) so far.
    pub fn reads(&self) -> usize {
        self.reads.load(Ordering::Relaxed)
    }
}

/// Reads a candle CSV file (see [`parse_csv`]); errors name the file. Blocking: the node calls
/// it through [`ReplayCache`].
pub fn load_csv(path: &Path) -> Result<Vec<Candle>, FeedError> {
    let text = std::fs::read_to_string(path).map_err(|source| FeedError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_csv(&text).map_err(|source| FeedError::Csv {
        path: path.display().to_string(),
        source,
    })
}

/// How long the only row of a one-row file lasts: nothing in the file says, and one minute
/// passes through as a candle of no timeframe but `1s` and `5s`.
const SINGLE_ROW_MS: i64 = 60_000;

/// The shortest gap between two rows, as a fraction (numerator, denominator) of the file's bar
/// length, that is not refused. Calendar months (28 days for a bar of 31) and daylight-saving
/// shifts (23 h for 24) stay above it; a stray row inside a regular gap leaves half of it or
/// less on one side, and is refused.
const SHORTEST_GAP: (i64, i64) = (3, 4);

/// Parses candle CSV: an optional header, then `time,open,high,low,close[,volume]` rows with
/// `YYYY-MM-DD` or `YYYY-MM-DD HH:MM[:SS]` times (UTC), in increasing time order.
///
/// Every row lasts the file's bar length: its most common gap between consecutive rows (the
/// shorter on a tie), so that weekends, holidays and missing rows (longer gaps) change
/// nothing. A row closer to the previous one than 3/4 of the bar length is refused with its
/// line: it would overlap its neighbour (a stray intraday row in a daily file). A text without
/// a row is refused too.
pub fn parse_csv(text: &str) -> Result<Vec<Candle>, CsvError> {
    // Each row with its line number, for the spacing check.
    let mut rows: Vec<(usize, Candle)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        let fail = |reason: String| CsvError::Line {
            line: n + 1,
            reason,
        };
        if line.is_empty() || (n == 0 && !line.starts_with(|c: char| c.is_ascii_digit())) {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() < 5 {
            return Err(fail(format!(
                "{} fields, need time,open,high,low,close",
                fields.len()
            )));
        }
        let start_ms = parse_time(fields[0]).map_err(fail)?;
        let price = |i: usize| {
            Decimal::from_str(fields[i])
                .ok()
                .filter(|p| *p > Decimal::ZERO)
                .ok_or_else(|| fail(format!("bad price {:?}", fields[i])))
        };
        let candle = Candle {
            start_ms,
            period_ms: 0,
            open: price(1)?,
            high: price(2)?,
            low: price(3)?,
            close: price(4)?,
        };
        if rows
            .last()
            .is_some_and(|(_, last)| last.start_ms >= start_ms)
        {
            return Err(fail("times must increase".into()));
        }
        rows.push((n + 1, candle));
    }
    if rows.is_empty() {
        return Err(CsvError::Empty);
    }
    let gaps = || {
        rows.windows(2)
            .map(|w| (w[0].0, w[1].0, w[1].1.start_ms - w[0].1.start_ms))
    };
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for (_, _, gap) in gaps() {
        *counts.entry(gap).or_default() += 1;
    }
    let period = counts
        .iter()
        .max_by(|(g1, n1), (g2, n2)| n1.cmp(n2).then(g2.cmp(g1)))
        .map_or(SINGLE_ROW_MS, |(gap, _)| *gap);
    let (num, den) = SHORTEST_GAP;
    if let Some((before, line, gap)) = gaps().find(|(_, _, gap)| gap * den < period * num) {
        return Err(CsvError::Line {
            line,
            reason: format!(
                "this row starts {} after line {before}, but the file's rows are {} apart; \
                 a row closer than {num}/{den} of that would overlap its neighbour (a stray row?)",
                span(gap),
                span(period)
            ),
        });
    }
    Ok(rows
        .into_iter()
        .map(|(_, c)| Candle {
            period_ms: period,
            ..c
        })
        .collect())
}

/// A duration in ms as the largest unit that divides it: `1d`, `9h`, `30m`, `5s`, `250ms`.
fn span(ms: i64) -> String {
    [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ]
    .iter()
    .find(|(unit, _)| ms % unit == 0)
    .map_or_else(
        || format!("{ms}ms"),
        |(unit, name)| format!("{}{name}", ms / unit),
    )
}

/// `YYYY-MM-DD[ HH:MM[:SS]]` (or with a `T`, or a trailing `Z`) as ms since the Unix epoch,
/// UTC. A date or time that does not exist (`2005-02-29`, `2005-04-31`, `24:00`) is refused,
/// never rolled over into the next day or month.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let bad = || format!("bad time {s:?}, need YYYY-MM-DD[ HH:MM[:SS]]");
    let (date, time) = s.split_once([' ', 'T']).unwrap_or((s, "00:00:00"));
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (Some(Some(y)), Some(Some(m)), Some(Some(day))) = (d.next(), d.next(), d.next()) else {
        return Err(bad());
    };
    if !(1..=12).contains(&m) {
        return Err(bad());
    }
    let month_days = days_in_month(y, m);
    if !(1..=month_days).contains(&day) {
        return Err(format!(
            "no such date {s:?}: {y}-{m:02} has {month_days} days"
        ));
    }
    let mut t = time
        .trim_end_matches('Z')
        .split(':')
        .map(|p| p.parse::<i64>().ok());
    let (Some(Some(hh)), Some(mm), Some(ss)) = (
        t.next(),
        t.next().unwrap_or(Some(0)),
        t.next().unwrap_or(Some(0)),
    ) else {
        return Err(bad());
    };
    if !(0..=23).contains(&hh) || !(0..=59).contains(&mm) || !(0..=59).contains(&ss) {
        return Err(format!("no such time {s:?}"));
    }
    Ok(((days_from_civil(y, m, day) * 24 + hh) * 60 + mm) * 60_000 + ss * 1_000)
}

/// Days in month `m` (1–12) of year `y`, proleptic Gregorian: February has 29 in years
/// divisible by 4, except centuries not divisible by 400.
fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Aggregates bars into candles of one timeframe. Bars as long as the timeframe or longer pass
/// through as they are; shorter ones are merged, and a candle is emitted as soon as a bar
/// reaches its end (or a later bar shows it will get no more data).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CandleBuilder {
    timeframe_ms: i64,
    partial: Option<Candle>,
}

impl CandleBuilder {
    /// A builder of `timeframe_ms` candles.
    pub fn new(timeframe_ms: i64) -> Self {
        Self {
            timeframe_ms: timeframe_ms.max(1),
            partial: None,
        }
    }

    /// Adds a bar; returns the candles it completed, oldest first.
    pub fn push(&mut self, bar: Candle) -> Vec<Candle> {
        let tf = self.timeframe_ms;
        let mut done = Vec::new();
        if bar.period_ms >= tf {
            done.extend(self.partial.take());
            done.push(bar);
            return done;
        }
        let bucket = bar.start_ms.div_euclid(tf) * tf;
        if self.partial.is_some_and(|p| p.start_ms != bucket) {
            done.extend(self.partial.take());
        }
        let merged = match self.partial {
            Some(p) => Candle {
                high: p.high.max(bar.high),
                low: p.low.min(bar.low),
                close: bar.close,
                ..p
            },
            None => Candle {
                start_ms: bucket,
                period_ms: tf,
                ..bar
            },
        };
        if bar.start_ms + bar.period_ms >= bucket + tf {
            done.push(merged);
            self.partial = None;
        } else {
            self.partial = Some(merged);
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog;
    use rust_decimal_macros::dec;

    #[test]
    fn the_simulated_market_is_reproducible_and_resumable() {
        let i = [
            catalog::instrument("BTC-PERPETUAL").unwrap(),
            catalog::instrument("EUR-USD").unwrap(),
        ];
        let tick = Duration::from_millis(100);
        let (mut a, mut b) = (
            SimulatedFeed::new(&i, 7, 60_000, tick),
            SimulatedFeed::new(&i, 7, 60_000, tick),
        );
        for _ in 0..100 {
            assert_eq!(a.next_bars(), b.next_bars());
        }
        // A feed rebuilt from saved state continues the very same path.
        let mut resumed = SimulatedFeed::new(&i, 7, 60_000, tick);
        resumed.restore(&a.state()).unwrap();
        for _ in 0..100 {
            assert_eq!(a.next_bars(), resumed.next_bars());
        }
        let bars = a.next_bars().unwrap();
        assert_eq!(bars[0].candle.start_ms, 200 * 60_000);
        assert!(
            (bars[0].candle.close % dec!(0.5)).is_zero(),
            "on the price step"
        );
        let other = SimulatedFeed::new(&i, 8, 60_000, tick).next_bars();
        assert_ne!(other, SimulatedFeed::new(&i, 7, 60_000, tick).next_bars());
    }

    #[test]
    fn csv_rows_parse_with_their_times() {
        let rows = parse_csv(
            ",Open,High,Low,Close,Volume\n2017-04-19 09:00:00,1.0716,1.0722,1.07083,1.07219,1413\n\
             2017-04-19 10:00:00,1.07214,1.07296,1.07214,1.0726,1241\n",
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].start_ms, 1_492_592_400_000);
        assert_eq!(rows[0].period_ms, 3_600_000);
        assert_eq!(rows[1].close, dec!(1.0726));
        assert_eq!(parse_time("2012-01-31"), Ok(1_327_968_000_000));
        assert_eq!(parse_time("2012-01-31T00:00:01Z"), Ok(1_327_968_001_000));
        assert!(parse_csv("2017-04-19,1,2,0.5,x\n").is_err());
        assert!(parse_csv("2017-04-19,1,2,0.5,1\n2017-04-18,1,2,0.5,1\n").is_err());
    }

    fn refused_line(csv: &str) -> (usize, String) {
        match parse_csv(csv) {
            Err(CsvError::Line { line, reason }) => (line, reason),
            other => panic!("not refused with a line: {other:?}"),
        }
    }

    #[test]
    fn dates_off_the_calendar_are_refused_on_their_own_line() {
        const HEADER: &str = ",Open,High,Low,Close,Volume\n2005-02-28,1,1,1,1,0\n";
        let (line, reason) = refused_line(&format!("{HEADER}2005-02-29,1,1,1,1,0\n"));
        assert_eq!(line, 3);
        assert!(reason.contains("2005-02 has 28 days"), "{reason}");
        // Not read as 2005-03-03, which would blame the next row for going back in time.
        let (line, _) = refused_line(&format!(
            "{HEADER}2005-02-31,1,1,1,1,0\n2005-03-01,1,1,1,1,0\n"
        ));
        assert_eq!(line, 3);
        for date in ["2004-02-29", "2000-02-29", "2005-04-30", "2005-12-31"] {
            assert!(parse_time(date).is_ok(), "{date}");
        }
        for date in [
            "1900-02-29",
            "2005-04-31",
            "2005-06-31",
            "2005-13-01",
            "2005-00-10",
        ] {
            assert!(parse_time(date).is_err(), "{date}");
        }
        for time in [
            "2005-01-01 24:00",
            "2005-01-01 10:60",
            "2005-01-01 10:00:60",
        ] {
            assert!(parse_time(time).is_err(), "{time}");
        }
    }

    #[test]
    fn empty_and_header_only_texts_are_refused() {
        for text in [
            "",
            "\n\n",
            ",Open,High,Low,Close,Volume\n",
            ",Open,High,Low,Close\n\n",
        ] {
            assert_eq!(parse_csv(text), Err(CsvError::Empty), "{text:?}");
        }
        // One row plays, for a minute: nothing says how long it lasts.
        let one = parse_csv("2017-04-19 09:00:00,1,1,1,1\n").unwrap();
        assert_eq!(one[0].period_ms, 60_000);
    }

    const DAY: i64 = 86_400_000;

    #[test]
    fn the_bar_length_is_the_most_common_gap_and_a_stray_row_is_refused() {
        // Daily rows over a weekend (a 3-day gap): rows last a day.
        let daily = "2020-01-02,1,1,1,1\n2020-01-03,1,1,1,1\n2020-01-06,1,1,1,1\n\
                     2020-01-07,1,1,1,1\n";
        assert!(parse_csv(daily).unwrap().iter().all(|c| c.period_ms == DAY));
        // Calendar months: most gaps are 31 days, February's 29 is no stray row.
        let monthly: String = [
            "2012-01-31",
            "2012-02-29",
            "2012-03-31",
            "2012-04-30",
            "2012-05-31",
            "2012-06-30",
            "2012-07-31",
        ]
        .iter()
        .map(|d| format!("{d},1,1,1,1\n"))
        .collect();
        assert_eq!(parse_csv(&monthly).unwrap()[0].period_ms, 31 * DAY);
        // Daily candles that shift with daylight saving (23 h once): still a day.
        let dst = "2020-03-05 22:00,1,1,1,1\n2020-03-06 22:00,1,1,1,1\n\
                   2020-03-09 21:00,1,1,1,1\n2020-03-10 21:00,1,1,1,1\n2020-03-11 21:00,1,1,1,1\n";
        assert_eq!(parse_csv(dst).unwrap()[0].period_ms, DAY);
        // A tie between two gaps: the shorter.
        let tie = "2020-01-01,1,1,1,1\n2020-01-02,1,1,1,1\n2020-01-04,1,1,1,1\n";
        assert_eq!(parse_csv(tie).unwrap()[0].period_ms, DAY);
        // A stray intraday row: refused with its line, whichever of its gaps is the short one.
        let (line, reason) = refused_line(
            "2020-01-02,1,1,1,1\n2020-01-03,1,1,1,1\n2020-01-03 15:00,1,1,1,1\n\
             2020-01-06,1,1,1,1\n2020-01-07,1,1,1,1\n2020-01-08,1,1,1,1\n",
        );
        assert_eq!(line, 3);
        assert!(
            reason.contains("starts 15h after line 2") && reason.contains("rows are 1d apart"),
            "{reason}"
        );
        let (line, reason) = refused_line(
            "2020-01-02,1,1,1,1\n2020-01-02 03:00,1,1,1,1\n2020-01-03,1,1,1,1\n\
             2020-01-06,1,1,1,1\n2020-01-07,1,1,1,1\n2020-01-08,1,1,1,1\n",
        );
        assert_eq!(line, 2, "{reason}");
    }

    fn bar(start_ms: i64, period_ms: i64, close: Decimal) -> Candle {
        Candle {
            start_ms,
            period_ms,
            open: close,
            high: close,
            low: close,
            close,
        }
    }

    #[test]
    fn candles_aggregate_to_the_timeframe() {
        let mut b = CandleBuilder::new(3_000);
        assert!(b.push(bar(0, 1_000, dec!(10))).is_empty());
        assert!(b.push(bar(1_000, 1_000, dec!(12))).is_empty());
        let done = b.push(bar(2_000, 1_000, dec!(11)));
        assert_eq!(
            done,
            vec![Candle {
                start_ms: 0,
                period_ms: 3_000,
                open: dec!(10),
                high: dec!(12),
                low: dec!(10),
                close: dec!(11)
            }]
        );
        // A gap: the partial candle is emitted when a later bucket starts.
        assert!(b.push(bar(3_000, 1_000, dec!(9))).is_empty());
        let done = b.push(bar(9_000, 1_000, dec!(8)));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].close, dec!(9));
        // Bars as long as the timeframe pass through.
        let mut b = CandleBuilder::new(60_000);
        assert_eq!(b.push(bar(0, 3_600_000, dec!(1))).len(), 1);
    }

    #[test]
    fn replay_merges_instruments_by_time_and_paces_by_speed() {
        let eur = catalog::instrument("EUR-USD").unwrap();
        let btc = catalog::instrument("BTC-USD").unwrap();
        let a = Arc::new(vec![bar(0, 1_000, dec!(1)), bar(2_000, 1_000, dec!(2))]);
        let b = Arc::new(vec![bar(1_000, 1_000, dec!(5)), bar(2_000, 1_000, dec!(6))]);
        let mut f = ReplayFeed::new(vec![(eur, a), (btc, b)], 1_000);
        assert_eq!(f.pace(), Some(Duration::ZERO));
        assert_eq!(f.next_bars().unwrap().len(), 1);
        assert_eq!(f.pace(), Some(Duration::from_millis(1)));
        assert_eq!(f.next_bars().unwrap()[0].instrument.name, "BTC-USD");
        let both = f.next_bars().unwrap();
        assert_eq!(both.len(), 2);
        assert_eq!(f.pace(), None);
        assert_eq!(f.next_bars(), None);
    }
}
