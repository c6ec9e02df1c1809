//! Wake-ups for a sharded fleet's idle waiters.
//!
//! A node cannot block on the ready lists of many shards at once (one blocking call reaches
//! one slot), so a sharded fleet's scripts announce work on a Pub/Sub channel
//! ([`Keys::wake_channel`]) instead: when a job lands on a ready list that was empty
//! (`ready <shard prefix>`), and when a stop command is pushed for a node
//! (`command <shard prefix> <node>`). Classic `PUBLISH` reaches the subscribers of every node
//! of a cluster, so one subscription, to any node, hears every shard. A shard's busy list
//! publishes nothing (only the empty-to-queued step does), so the channel stays quiet under
//! load.
//!
//! A wake-up is a hint, never the only path: a waiter subscribes before it looks, looks at
//! every shard when its wait times out, and [`Wake::start`]'s listener announces
//! [`WakeUp::Resync`] after each (re)connection, when messages may have been missed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::ids::NodeId;
use crate::keys::Keys;

/// What a wake-up announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WakeUp {
    /// The ready list of this shard got a job while it was empty.
    Ready(usize),
    /// This node got a command in this shard.
    Command(usize, NodeId),
    /// The listener (re)connected: anything may have been missed, look everywhere.
    Resync,
}

/// The payload of a ready list's wake-up (`lib.lua` writes the same).
pub fn ready_message(shard_prefix: &str) -> String {
    format!("ready {shard_prefix}")
}

/// A subscription to a fleet's wake-up channel, shared by every waiter of a process. Cloning
/// shares it; the listener stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Wake {
    sender: broadcast::Sender<WakeUp>,
    _stop: Arc<StopOnDrop>,
}

#[derive(Debug)]
struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// How often the listener checks its connection with a `PING` (a peer that died silently is
/// otherwise never noticed).
const PING_EVERY: Duration = Duration::from_secs(5);

impl Wake {
    /// Subscribes to `channel` over `seeds` (tried in turn, again after every failure), mapping
    /// shard prefixes to shard numbers by `shards` (each shard's [`Keys`]). Must be called on a
    /// Tokio runtime.
    pub fn start(
        seeds: Vec<redis::ConnectionInfo>,
        channel: String,
        shards: &[Keys],
        response_timeout: Duration,
    ) -> Self {
        let (sender, _) = broadcast::channel(1024);
        let stop = CancellationToken::new();
        let index: HashMap<String, usize> = shards
            .iter()
            .enumerate()
            .map(|(i, k)| (k.prefix().to_owned(), i))
            .collect();
        let listener = Subscriber {
            seeds,
            channel,
            index,
            sender: sender.clone(),
            response_timeout,
        };
        tokio::spawn(listener.run(stop.clone()));
        Wake {
            sender,
            _stop: Arc::new(StopOnDrop(stop)),
        }
    }

    /// A receiver of every wake-up from now on: subscribe before looking, so that nothing
    /// announced in between is missed.
    pub fn subscribe(&self) -> broadcast::Receiver<WakeUp> {
        self.sender.subscribe()
    }
}

/// A [`Wake`] started on first use: processes that never wait (orchestrators) never subscribe.
/// Cloning shares it.
#[derive(Clone)]
pub struct LazyWake {
    cell: Arc<std::sync::OnceLock<Wake>>,
    seeds: Vec<redis::ConnectionInfo>,
    channel: String,
    shards: Vec<Keys>,
    response_timeout: Duration,
}

impl std::fmt::Debug for LazyWake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyWake")
            .field("channel", &self.channel)
            .field("started", &self.cell.get().is_some())
            .finish()
    }
}

impl LazyWake {
    /// What [`Wake::start`] takes, to start it on the first [`LazyWake::get`].
    pub fn new(
        seeds: Vec<redis::ConnectionInfo>,
        channel: String,
        shards: Vec<Keys>,
        response_timeout: Duration,
    ) -> Self {
        Self {
            cell: Arc::default(),
            seeds,
            channel,
            shards,
            response_timeout,
        }
    }

    /// The subscription, started now if it was not (on the current Tokio runtime).
    pub fn get(&self) -> &Wake {
        self.cell.get_or_init(|| {
            Wake::start(
                self.seeds.clone(),
                self.channel.clone(),
                &self.shards,
                self.response_timeout,
            )
        })
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }
}

/// Each waiting node's receiver, kept between its waits: a wake-up announced while the node was
/// busy (between two waits) is still there for its next wait.
#[derive(Debug, Default)]
pub struct Listeners {
    receivers: std::sync::Mutex<HashMap<NodeId, Listener>>,
}

/// One node's receiver, and when it last looked everywhere.
#[derive(Debug)]
pub struct Listener {
    /// The wake-ups since its last wait.
    pub rx: broadcast::Receiver<WakeUp>,
    /// When it last looked at every shard (`None`: never, it is new).
    pub looked: Option<std::time::Instant>,
}

impl Listeners {
    /// `node`'s receiver, new (never looked) if it had none; give it back with
    /// [`Listeners::put`] (a wait dropped half-way loses it, and the next one starts afresh).
    pub fn take(&self, wake: &Wake, node: &NodeId) -> Listener {
        self.lock().remove(node).unwrap_or_else(|| Listener {
            rx: wake.subscribe(),
            looked: None,
        })
    }

    /// Gives `node`'s receiver back for its next wait.
    pub fn put(&self, node: &NodeId, listener: Listener) {
        self.lock().insert(node.clone(), listener);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Listener>> {
        self.receivers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Listener {
    /// Whether it should look everywhere now: it never did, or not for `every`.
    pub fn due(&self, every: Duration) -> bool {
        self.looked.is_none_or(|at| at.elapsed() >= every)
    }

    /// The wake-ups that came since its last wait, consumed: the first that `wanted` accepts,
    /// or [`WakeUp::Resync`] if one was missed or a resubscription happened.
    pub fn pending(&mut self, mut wanted: impl FnMut(&WakeUp) -> bool) -> Option<WakeUp> {
        let mut found = None;
        loop {
            match self.rx.try_recv() {
                Ok(WakeUp::Resync) => found = Some(WakeUp::Resync),
                Ok(w) if wanted(&w) => {
                    found.get_or_insert(w);
                }
                Ok(_) => {}
                Err(broadcast::error::TryRecvError::Lagged(_)) => found = Some(WakeUp::Resync),
                Err(_) => return found,
            }
        }
    }
}

/// Waits up to `wait` for a wake-up that `wanted` accepts (or a resync, or a lagging receiver,
/// which may have dropped one). Returns the wake-up, or `None` when the wait ran out.
pub async fn wait_for(
    rx: &mut broadcast::Receiver<WakeUp>,
    wait: Duration,
    mut wanted: impl FnMut(&WakeUp) -> bool,
) -> Option<WakeUp> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => return None,
            Ok(Ok(w)) if w == WakeUp::Resync || wanted(&w) => return Some(w),
            Ok(Ok(_)) => continue,
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => return Some(WakeUp::Resync),
            // The listener is gone (the process is shutting down): wait out the time.
            Ok(Err(broadcast::error::RecvError::Closed)) => {
                tokio::time::sleep_until(deadline).await;
                return None;
            }
        }
    }
}

struct Subscriber {
    seeds: Vec<redis::ConnectionInfo>,
    channel: String,
    index: HashMap<String, usize>,
    sender: broadcast::Sender<WakeUp>,
    response_timeout: Duration,
}

impl Subscriber {
    async fn run(self, stop: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let mut next = 0;
        while !stop.is_cancelled() {
            let seed = self.seeds[next % self.seeds.len().max(1)].clone();
            next += 1;
            let served = tokio::select! {
                r = self.serve(seed, &mut backoff) => r,
                () = stop.cancelled() => return,
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "wake-up subscription lost; resubscribing");
            }
            tokio::select! {
                () = backoff.wait() => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// One subscription, until its connection fails.
    async fn serve(
        &self,
        seed: redis::ConnectionInfo,
        backoff: &mut Backoff,
    ) -> Result<(), redis::RedisError> {
        let client = redis::Client::open(seed)?;
        let connect = client.get_async_pubsub();
        let mut pubsub = tokio::time::timeout(self.response_timeout, connect)
            .await
            .map_err(|_| timed_out("connect"))??;
        pubsub.subscribe(&self.channel).await?;
        let (mut sink, mut messages) = pubsub.split();
        backoff.reset();
        // Subscribed: whatever was announced while there was no subscription is looked for.
        let _ = self.sender.send(WakeUp::Resync);
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(msg) = msg else { return Err(timed_out("subscription closed")) };
                    if let Ok(payload) = msg.get_payload::<String>()
                        && let Some(w) = self.parse(&payload)
                    {
                        let _ = self.sender.send(w);
                    }
                }
                _ = ping.tick() => {
                    tokio::time::timeout(self.response_timeout, sink.ping::<redis::Value>())
                        .await
                        .map_err(|_| timed_out("ping"))??;
                }
            }
        }
    }

    fn parse(&self, payload: &str) -> Option<WakeUp> {
        let mut parts = payload.split(' ');
        let (kind, prefix) = (parts.next()?, parts.next()?);
        let shard = *self.index.get(prefix)?;
        match kind {
            "ready" => Some(WakeUp::Ready(shard)),
            "command" => Some(WakeUp::Command(shard, NodeId::new(parts.next()?))),
            _ => None,
        }
    }
}

fn timed_out(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Io,
        "wake-up subscription",
        what.to_owned(),
    ))
}
