//! `runfleet top`: a live full-screen view of the fleet (ratatui over crossterm). Three parts,
//! as ratatui's examples shape them: the state ([`App`]), fed by the fleet's status read every
//! interval and by the event stream; a pure [`draw`] of one frame from it; and the event loop
//! ([`run`]). `--once` draws one frame into ratatui's `TestBackend` and prints its lines
//! ([`render_text`]), so scripts and tests read exactly what the screen shows.

use std::collections::VecDeque;
use std::time::Duration;

use futures::StreamExt;
use ratatui::Frame;
use ratatui::backend::TestBackend;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, List, ListItem, Paragraph, Row, Sparkline, Table};
use runfleet_client::api::{FleetStatus, Nodes};
use runfleet_client::{Client, EventFilter, NodeInfo, RunnerEvent, StreamEvent};

use crate::show;

/// Queue-depth samples kept (one per refresh).
const DEPTH_SAMPLES: usize = 120;
/// Events listed.
const EVENTS_KEPT: usize = 50;
/// The window the start rate and its sparkline cover (seconds).
const STARTS_WINDOW_S: u64 = 60;
/// The window `starts/s` is averaged over (seconds).
const RATE_WINDOW_S: u64 = 10;

/// What `top` shows.
#[derive(Debug, Clone, Default)]
pub struct App {
    /// The server.
    pub url: String,
    /// The fleet-wide counts, as last read.
    pub fleet: Option<FleetStatus>,
    /// The live nodes, as last read.
    pub nodes: Vec<NodeInfo>,
    /// Queue depth, one sample per refresh, oldest first.
    pub depth: VecDeque<u64>,
    /// When runners were admitted (ms, store clock), oldest first, over [`STARTS_WINDOW_S`].
    pub starts: VecDeque<u64>,
    /// The newest events, newest first.
    pub events: VecDeque<RunnerEvent>,
    /// Now, on the store's clock (ms).
    pub now_ms: u64,
    /// The last failure to read, shown until a read succeeds.
    pub error: Option<String>,
}

impl App {
    /// An empty view of `url`.
    pub fn new(url: &str) -> Self {
        App {
            url: url.to_owned(),
            ..App::default()
        }
    }

    /// A fresh read of the fleet's status and nodes at `now_ms`.
    pub fn on_status(&mut self, fleet: FleetStatus, nodes: Nodes, now_ms: u64) {
        self.depth.push_back(fleet.queue_stats.queued_jobs);
        while self.depth.len() > DEPTH_SAMPLES {
            self.depth.pop_front();
        }
        self.fleet = Some(fleet);
        self.nodes = nodes.nodes;
        self.nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        self.error = None;
        self.tick(now_ms);
    }

    /// Time passes: what fell out of the windows goes.
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let since = self.now_ms.saturating_sub(STARTS_WINDOW_S * 1000);
        while self.starts.front().is_some_and(|&at| at < since) {
            self.starts.pop_front();
        }
    }

    /// One event from the stream.
    pub fn on_event(&mut self, e: RunnerEvent) {
        if e.kind == "admitted" {
            let at = self.starts.partition_point(|&t| t <= e.at);
            self.starts.insert(at, e.at);
        }
        self.now_ms = self.now_ms.max(e.at);
        self.events.push_front(e);
        self.events.truncate(EVENTS_KEPT);
    }

    /// Runners admitted per second over the last [`RATE_WINDOW_S`] seconds.
    pub fn starts_per_second(&self) -> f64 {
        let since = self.now_ms.saturating_sub(RATE_WINDOW_S * 1000);
        let n = self.starts.iter().filter(|&&at| at > since).count();
        n as f64 / RATE_WINDOW_S as f64
    }

    /// Starts in each of the last `seconds` seconds (at most [`STARTS_WINDOW_S`]), oldest
    /// first.
    pub fn starts_by_second(&self, seconds: u64) -> Vec<u64> {
        let seconds = seconds.min(STARTS_WINDOW_S);
        let mut buckets = vec![0; seconds as usize];
        for &at in &self.starts {
            let age = self.now_ms.saturating_sub(at) / 1000;
            if age < seconds {
                buckets[(seconds - 1 - age) as usize] += 1;
            }
        }
        buckets
    }

    /// Reads the fleet once: status, nodes, and the events of the last minute (the stream
    /// replays them from an id a minute old, and is left once it has been quiet briefly).
    pub async fn read_once(client: &Client) -> anyhow::Result<App> {
        let now = client.health().await?.store_time;
        let (fleet, nodes) = tokio::try_join!(client.fleet_status(), client.nodes())?;
        let mut app = App::new(client.base_url());
        app.on_status(fleet, nodes, now);
        let mut stream = client.events(EventFilter {
            last_event_id: Some(format!("{}-0", now.saturating_sub(STARTS_WINDOW_S * 1000))),
            ..EventFilter::default()
        });
        while let Ok(Some(item)) =
            tokio::time::timeout(Duration::from_millis(300), stream.next()).await
        {
            if let StreamEvent::Runner(e) = item? {
                app.on_event(e);
            }
        }
        app.tick(now);
        Ok(app)
    }

    async fn refresh(&mut self, client: &Client, clock_offset_ms: i64) {
        match tokio::try_join!(client.fleet_status(), client.nodes()) {
            Ok((fleet, nodes)) => {
                let now = show::now_ms().saturating_add_signed(clock_offset_ms);
                self.on_status(fleet, nodes, now);
            }
            Err(e) => self.error = Some(e.to_string()),
        }
    }
}

/// Draws one frame of `app`.
pub fn draw(frame: &mut Frame<'_>, app: &App) {
    let [header, graphs, middle, events] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(7),
        Constraint::Min(7),
        Constraint::Length(10),
    ])
    .areas(frame.area());
    draw_header(frame, header, app);
    let [depth, starts] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(graphs);
    draw_depth(frame, depth, app);
    draw_starts(frame, starts, app);
    let [runners, nodes] =
        Layout::horizontal([Constraint::Length(30), Constraint::Min(20)]).areas(middle);
    draw_runners(frame, runners, app);
    draw_nodes(frame, nodes, app);
    draw_events(frame, events, app);
}

fn titled(title: String) -> Block<'static> {
    Block::default().borders(Borders::ALL).title(Span::styled(
        title,
        Style::default().add_modifier(Modifier::BOLD),
    ))
}

fn draw_header(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let mut spans = vec![
        Span::styled(
            "runfleet top",
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Span::raw(format!("  {}  (q quits)", app.url)),
    ];
    if let Some(e) = &app.error {
        spans.push(Span::styled(
            format!("  error: {e}"),
            Style::default().fg(Color::Red),
        ));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_depth(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let now = app.depth.back().copied().unwrap_or(0);
    let max = app.depth.iter().copied().max().unwrap_or(0);
    let data: Vec<u64> = app.depth.iter().copied().collect();
    let widget = Sparkline::default()
        .block(titled(format!("Queue depth: {now} (max {max})")))
        .data(newest(&data, area))
        .style(Style::default().fg(Color::Yellow));
    frame.render_widget(widget, area);
}

fn draw_starts(frame: &mut Frame<'_>, area: Rect, app: &App) {
    // One bar per second, as many seconds as the box holds (a minute at most).
    let data = app.starts_by_second(u64::from(area.width.saturating_sub(2)));
    let widget = Sparkline::default()
        .block(titled(format!(
            "Starts/s: {:.1} (last {RATE_WINDOW_S} s), {} in {} s",
            app.starts_per_second(),
            data.iter().sum::<u64>(),
            data.len()
        )))
        .data(&data)
        .style(Style::default().fg(Color::Green));
    frame.render_widget(widget, area);
}

/// The newest samples of `data` that fit inside `area`'s borders: a sparkline draws from the
/// left and drops what does not fit, which would be the newest.
fn newest(data: &[u64], area: Rect) -> &[u64] {
    let width = usize::from(area.width.saturating_sub(2));
    &data[data.len().saturating_sub(width)..]
}

fn draw_runners(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let lines = match &app.fleet {
        None => vec![Line::from("no status read yet")],
        Some(f) => {
            let q = f.queue_stats;
            let row = |name: &str, n: u64, color: Color| {
                Line::from(vec![
                    Span::raw(format!("{name:<14}")),
                    Span::styled(format!("{n:>8}"), Style::default().fg(color)),
                ])
            };
            vec![
                row("running", q.running_workers, Color::Green),
                row("queued", q.queued_jobs, Color::Yellow),
                row("restarting", q.restarting_jobs, Color::Red),
                row("holding slots", q.total_workers, Color::White),
                Line::from(""),
                Line::from(format!(
                    "{} nodes, {}/{} slots",
                    f.nodes.alive, f.nodes.runners, f.nodes.capacity
                )),
            ]
        }
    };
    frame.render_widget(
        Paragraph::new(lines).block(titled("Runners by status".into())),
        area,
    );
}

fn draw_nodes(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let rows = app.nodes.iter().map(|n| {
        Row::new(vec![
            n.node_id.to_string(),
            show::bar(n.runners, n.capacity, 12),
            format!("{}/{}", n.runners, n.capacity),
            n.last_heartbeat_at
                .map_or("-".into(), |at| show::ago(at, app.now_ms)),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Min(14),
            Constraint::Length(12),
            Constraint::Length(9),
            Constraint::Length(9),
        ],
    )
    .header(
        Row::new(vec!["NODE", "IN USE", "RUNNERS", "HEARTBEAT"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(titled(format!("Nodes: {}", app.nodes.len())));
    frame.render_widget(table, area);
}

fn draw_events(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let items: Vec<ListItem<'_>> = app
        .events
        .iter()
        .map(|e| {
            let mut text = format!(
                "{:>7}  {:<17} {} ({})",
                show::ago(e.at, app.now_ms),
                e.kind,
                e.job,
                e.user
            );
            if !e.node.is_empty() {
                text.push_str(&format!(" on {}", e.node));
            }
            if !e.reason.is_empty() {
                text.push_str(&format!(": {}", e.reason));
            }
            ListItem::new(text)
        })
        .collect();
    frame.render_widget(List::new(items).block(titled("Last events".into())), area);
}

/// One frame of `app`, `width` by `height`, as plain text lines (trailing blanks trimmed).
pub fn render_text(app: &App, width: u16, height: u16) -> String {
    let mut terminal = match ratatui::Terminal::new(TestBackend::new(width, height)) {
        Ok(t) => t,
        Err(never) => match never {},
    };
    if let Err(never) = terminal.draw(|f| draw(f, app)) {
        match never {}
    }
    let buffer = terminal.backend().buffer();
    let mut out = String::new();
    for y in 0..buffer.area.height {
        let line: String = (0..buffer.area.width)
            .map(|x| buffer[(x, y)].symbol())
            .collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The live view until `q` (or Esc, or Ctrl-C).
pub async fn run(client: Client, interval: Duration) -> anyhow::Result<()> {
    // Before the screen is taken: a wrong URL or key fails as any command does.
    let store_now = client.health().await?.store_time;
    client.fleet_status().await?;
    let offset = store_now as i64 - show::now_ms() as i64;
    let mut terminal = ratatui::init();
    let result = event_loop(&mut terminal, &client, interval, offset, store_now).await;
    ratatui::restore();
    result
}

async fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    client: &Client,
    interval: Duration,
    offset: i64,
    store_now: u64,
) -> anyhow::Result<()> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

    // Keys are read on a thread of their own (crossterm's read blocks).
    let (keys_tx, mut keys) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        loop {
            match event::poll(Duration::from_millis(100)) {
                Ok(true) => {
                    let Ok(Event::Key(k)) = event::read() else {
                        continue;
                    };
                    if k.kind == KeyEventKind::Press && keys_tx.blocking_send(k).is_err() {
                        return;
                    }
                }
                Ok(false) if keys_tx.is_closed() => return,
                Ok(false) => {}
                Err(_) => return,
            }
        }
    });
    // The status reads do not retry: a refresh that fails shows its error and the next one
    // comes at the next tick, so the screen never waits on a 503's retries. The event stream
    // keeps the client's reconnections.
    let reads = client
        .clone()
        .with_retry(runfleet_client::RetryPolicy {
            retries: 0,
            ..runfleet_client::RetryPolicy::default()
        })
        .with_timeout(interval.max(Duration::from_secs(2)));
    let mut app = App::new(client.base_url());
    app.refresh(&reads, offset).await;
    let mut stream = client
        .events(EventFilter {
            last_event_id: Some(format!(
                "{}-0",
                store_now.saturating_sub(STARTS_WINDOW_S * 1000)
            )),
            ..EventFilter::default()
        })
        .fuse();
    let mut tick = tokio::time::interval(interval);
    loop {
        terminal.draw(|f| draw(f, &app))?;
        tokio::select! {
            _ = tick.tick() => app.refresh(&reads, offset).await,
            Some(item) = stream.next() => match item {
                Ok(StreamEvent::Runner(e)) => app.on_event(e),
                Ok(StreamEvent::Gap(_)) => {}
                Err(e) => app.error = Some(format!("event stream: {e}")),
            },
            Some(key) = keys.recv() => {
                let ctrl_c = key.code == KeyCode::Char('c')
                    && key.modifiers.contains(KeyModifiers::CONTROL);
                if matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runfleet_client::api::{FleetCounts, NodeCounts, Succeeded};
    use runfleet_client::ids::{JobId, NodeId, UserId};

    fn app() -> App {
        let mut app = App::new("http://fleet:8080");
        let fleet = FleetStatus {
            success: Succeeded,
            user_id: "system".into(),
            workers: [],
            queue_stats: FleetCounts {
                queued_jobs: 7,
                running_workers: 42,
                total_workers: 50,
                restarting_jobs: 1,
            },
            nodes: NodeCounts {
                alive: 2,
                capacity: 100,
                runners: 42,
            },
        };
        let node = |id: &str, runners| NodeInfo {
            node_id: NodeId::new(id),
            capacity: 50,
            runners,
            started_at: 1_000,
            last_heartbeat_at: Some(99_000),
        };
        let nodes = Nodes {
            success: Succeeded,
            nodes: vec![node("node-b", 40), node("node-a", 2)],
            queued_jobs: 7,
        };
        app.on_status(fleet, nodes, 100_000);
        for (i, at) in [95_000, 97_000, 99_500].into_iter().enumerate() {
            app.on_event(RunnerEvent {
                id: format!("{at}-0"),
                job: JobId::new(format!("job-{i}")),
                user: UserId::new("u1"),
                kind: "admitted".into(),
                epoch: 0,
                node: String::new(),
                reason: String::new(),
                at,
            });
        }
        app
    }

    #[test]
    fn a_frame_shows_every_section_with_its_numbers() {
        let text = render_text(&app(), 100, 32);
        for needle in [
            "runfleet top",
            "http://fleet:8080",
            "Queue depth: 7",
            "Starts/s: 0.3",
            "Runners by status",
            "running",
            "42",
            "restarting",
            "Nodes: 2",
            "node-a",
            "40/50",
            "1s ago",
            "Last events",
            "admitted",
            "job-2 (u1)",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
        // Nodes sorted by id, the newest event first.
        assert!(text.find("node-a").unwrap() < text.find("node-b").unwrap());
        assert!(text.find("job-2").unwrap() < text.find("job-0").unwrap());
        assert_eq!(text.lines().count(), 32);
        // The starts of the last seconds are drawn: the right box's sparkline is not blank.
        let bars: String = text
            .lines()
            .skip(2)
            .take(5)
            .filter_map(|l| l.split_once("││").map(|(_, right)| right.to_owned()))
            .collect();
        assert!(bars.contains('█'), "{text}");
    }

    #[test]
    fn starts_age_out_of_their_window() {
        let mut app = app();
        assert_eq!(app.starts_by_second(60).iter().sum::<u64>(), 3);
        assert_eq!(
            app.starts_by_second(4),
            [1, 0, 0, 1],
            "97.0 s and 99.5 s, at 100 s"
        );
        app.tick(99_000 + STARTS_WINDOW_S * 1000);
        assert_eq!(app.starts.len(), 1, "only the newest is within a minute");
        assert_eq!(app.starts_per_second(), 0.0);
    }
}
