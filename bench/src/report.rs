//! The measured rows, the figures of each repetition, and the markdown table they make.

use std::collections::BTreeMap;

/// One row of the table: a figure measured on both systems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Row {
    /// Starts per second over HTTP (runfleet) vs `queue.add` (BullMQ), 50 clients.
    HttpStarts,
    /// Starts per second through the admission script from a plain client vs `queue.add`.
    ScriptStarts,
    /// Starts per second in pipelined batches of 1,000 vs `addBulk`.
    BulkStarts,
    /// Starts per second in `POST /v1/runners/batch` calls of 1,000 vs `addBulk`.
    BatchHttpStarts,
    /// Redis CPU per start (µs), during the HTTP / `queue.add` phase.
    CpuPerStart,
    /// The starting clients' own CPU per start (µs): the bench process / the Node process.
    ClientCpuPerStart,
    /// The orchestrator's CPU per start (µs); BullMQ has no such process.
    ApiCpuPerStart,
    /// Every process's CPU per start (µs): clients, orchestrator and Redis.
    MachineCpuPerStart,
    /// Pick-up latency, request to running, median (ms).
    PickupP50,
    /// Pick-up latency, 99th percentile (ms).
    PickupP99,
    /// All queued jobs running after the nodes / worker start (ms).
    Drain,
    /// Redis' CPU over the drain (ms): the floor of the drain's time on one Redis.
    DrainRedisCpu,
    /// The worker nodes' CPU from their spawn to the drain's end (ms); runfleet only.
    DrainNodeCpu,
    /// Redis CPU (ms) per minute per 1,000 running runners / active jobs.
    SteadyCpu,
    /// Bytes received by Redis per runner per heartbeat / per job per lock renewal.
    BytesPerBeat,
    /// The longest `PING` round trip with every runner / job running (ms).
    Stall,
    /// The longest `PING` round trip during the drain (ms).
    DrainStall,
    /// Worker memory per running runner / active job (KiB).
    MemoryPerRunner,
}

impl Row {
    /// Every row, in table order.
    pub const ALL: [Row; 18] = [
        Row::HttpStarts,
        Row::ScriptStarts,
        Row::BulkStarts,
        Row::BatchHttpStarts,
        Row::CpuPerStart,
        Row::ClientCpuPerStart,
        Row::ApiCpuPerStart,
        Row::MachineCpuPerStart,
        Row::PickupP50,
        Row::PickupP99,
        Row::Drain,
        Row::DrainRedisCpu,
        Row::DrainNodeCpu,
        Row::SteadyCpu,
        Row::BytesPerBeat,
        Row::Stall,
        Row::DrainStall,
        Row::MemoryPerRunner,
    ];

    /// Its label, with the sizes it was measured at.
    pub fn label(self, sizes: &crate::Sizes) -> String {
        let s = sizes;
        match self {
            Row::HttpStarts => format!(
                "starts/s, {} concurrent clients: `POST /v1/runners` vs `queue.add`",
                s.clients
            ),
            Row::ScriptStarts => format!(
                "starts/s, the admission script from a plain Redis client, {} concurrent, vs `queue.add`",
                s.clients
            ),
            Row::BulkStarts => format!(
                "bulk starts/s: {} admissions in one round trip from a plain client vs `addBulk` of {}",
                s.bulk_batch, s.bulk_batch
            ),
            Row::BatchHttpStarts => format!(
                "bulk starts/s: {} runners per `POST /v1/runners/batch` vs `addBulk` of {}",
                s.bulk_batch, s.bulk_batch
            ),
            Row::CpuPerStart => "Redis CPU per start (µs), HTTP starts vs `queue.add`".into(),
            Row::ClientCpuPerStart => {
                "the clients' CPU per start (µs): the bench's HTTP client vs Node's `queue.add`"
                    .into()
            }
            Row::ApiCpuPerStart => "the orchestrator's CPU per HTTP start (µs)".into(),
            Row::MachineCpuPerStart => {
                "CPU per start of every process, clients + orchestrator + Redis (µs)".into()
            }
            Row::PickupP50 => "pick-up, request → running, p50 (ms)".into(),
            Row::PickupP99 => "pick-up, request → running, p99 (ms)".into(),
            Row::Drain => format!("drain {} queued → all running (ms)", s.running),
            Row::DrainRedisCpu => format!("Redis CPU over the drain of {} (ms)", s.running),
            Row::DrainNodeCpu => {
                "the worker nodes' CPU from their spawn to the drain's end (ms)".into()
            }
            Row::SteadyCpu => format!(
                "Redis CPU (ms) per minute per 1,000 running runners ({}) vs active jobs ({} running, default timings)",
                match s.runners {
                    crate::Runners::Busy => "busy",
                    crate::Runners::Idle => "idle",
                },
                s.running
            ),
            Row::BytesPerBeat => {
                "bytes sent to Redis per runner per heartbeat vs per job per lock renewal".into()
            }
            Row::Stall => format!("longest Redis stall (PING, ms) with {} running", s.running),
            Row::DrainStall => format!(
                "longest Redis stall (PING, ms) while {} queued drain",
                s.running
            ),
            Row::MemoryPerRunner => {
                "worker memory per running runner vs per active job (KiB)".into()
            }
        }
    }
}

/// The figures of one repetition of one system.
pub type Sample = BTreeMap<Row, f64>;

/// Min, median and max of `values` (empty: none).
fn spread(values: &[f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    Some((v[0], median, v[v.len() - 1]))
}

/// The `q`-quantile (0..=1) of `values`, nearest rank.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn figure(x: f64) -> String {
    let a = x.abs();
    if a >= 1_000.0 {
        let whole = x.round() as i64;
        let digits = whole.abs().to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if whole < 0 { format!("-{out}") } else { out }
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn cell(values: &[f64]) -> String {
    match spread(values) {
        None => "—".into(),
        Some((min, med, max)) if values.len() == 1 || min == max => figure(med),
        Some((min, med, max)) => format!("{} ({}–{})", figure(med), figure(min), figure(max)),
    }
}

/// The markdown table: per row, each system's median (min–max) and the ratio of the medians
/// (runfleet ÷ BullMQ).
pub fn table(sizes: &crate::Sizes, runfleet: &[Sample], bullmq: &[Sample]) -> String {
    let mut out = String::from(
        "| measure | runfleet median (min–max) | BullMQ median (min–max) | ratio |\n|---|---|---|---|\n",
    );
    for row in Row::ALL {
        let values = |samples: &[Sample]| -> Vec<f64> {
            samples
                .iter()
                .filter_map(|s| s.get(&row).copied())
                .collect()
        };
        let (r, b) = (values(runfleet), values(bullmq));
        let ratio = match (spread(&r), spread(&b)) {
            (Some((_, r, _)), Some((_, b, _))) if b != 0.0 => format!("{:.2}", r / b),
            _ => "—".into(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            row.label(sizes),
            cell(&r),
            cell(&b),
            ratio
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_and_quantiles() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), Some((1.0, 2.0, 3.0)));
        assert_eq!(spread(&[4.0, 1.0]), Some((1.0, 2.5, 4.0)));
        assert_eq!(spread(&[]), None);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
    }

    #[test]
    fn figures_read_well() {
        assert_eq!(figure(35_512.4), "35,512");
        assert_eq!(figure(874.2), "874");
        assert_eq!(figure(24.04), "24.0");
        assert_eq!(figure(2.054), "2.05");
        assert_eq!(cell(&[1.0, 3.0, 2.0]), "2.00 (1.00–3.00)");
    }
}
