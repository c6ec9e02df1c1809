//! RabbitMQ queue: one durable classic queue carries job ids from orchestrators to worker nodes.
//! Redis keeps every job's state, lease and heartbeat either way; the broker only hands jobs
//! over.
//!
//! How the [`JobQueue`] contract maps onto AMQP:
//!
//! - **enqueue** publishes each id (persistent, `mandatory`) on a channel of its own with
//!   publisher confirms, and returns `Ok` only once the broker confirmed every message. A nack,
//!   a returned (unroutable) message, a lost connection or no confirm within
//!   `rabbitmq.confirm_timeout_ms` is retried (reconnecting if the connection was lost) until
//!   that deadline, then is an error. A retry may publish an id twice; the store's claim script drops the second
//!   copy, so at-least-once is enough.
//! - **claim** opens a channel for this one batch, sets its prefetch (`basic.qos`) to `max`
//!   (the node's free capacity), consumes, waits up to `wait` for the first delivery, then
//!   cancels the consumer and takes whatever the broker had delivered by then: never more than
//!   the prefetch. No consumer outlives a claim, so a node at capacity holds no deliveries it
//!   cannot run, and none waits past `consumer_timeout` (the node acks right after its claim is
//!   recorded in Redis).
//! - **ack** acks on the batch's channel; **release** nacks with requeue (the broker puts the
//!   messages back at their original place, ahead of later ones). A batch's channel is closed
//!   once every delivery of it is settled, which also returns any delivery that raced the
//!   consumer's cancel.
//! - **recover** nacks every unsettled delivery the node holds through this queue object and
//!   closes their channels. A node in another process needs no recovery call: when its
//!   connection drops, the broker requeues its unacked deliveries itself.
//! - **remove** returns `false`: AMQP cannot take a message out of the middle of a queue. The
//!   stopped job stays queued until a node claims it; the claim script drops it because its
//!   record says stopped, and the node acks it.
//! - **depth** is the ready-message count of a passive `queue.declare`.
//!
//! Connection loss (broker restart, network) is survived by reconnecting on the next call,
//! with exponential backoff and jitter (`rabbitmq.reconnect_min_ms` doubling to
//! `reconnect_max_ms`, see [`crate::backoff`]) shared by every caller of the queue object. lapin's automatic recovery is not used: a
//! claim's channel lives for one batch, and a lost connection's unacked deliveries belong to
//! the broker again anyway.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{Delivery, JobQueue, QueueError};
use crate::backoff::Backoff;
use crate::config::{ConfigError, RabbitMqSettings};
use crate::ids::{JobId, NodeId};

/// AMQP delivery mode of a message the broker writes to disk.
const PERSISTENT: u8 = 2;
/// Bits of a [`Delivery::tag`] holding the AMQP delivery tag; the rest is the batch number.
/// A batch's channel carries one consumer whose prefetch is at most `u16::MAX`, so its
/// delivery tags fit.
const TAG_BITS: u32 = 16;
/// The longest a claim waits for a connection, beyond its `wait`, so that a claim in flight
/// during an outage still ends soon after its wait.
const CLAIM_CONNECT_GRACE: Duration = Duration::from_secs(1);

fn broker(what: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError::Broker(format!("{what}: {e}"))
}

/// A queue on a RabbitMQ broker. Cloning shares the connection and the claims in flight.
#[derive(Clone)]
pub struct RabbitMqQueue {
    inner: Arc<Inner>,
}

struct Inner {
    uri: AMQPUri,
    settings: RabbitMqSettings,
    name: String,
    link: tokio::sync::Mutex<Link>,
    /// Claimed batches with unsettled deliveries, by batch number.
    batches: Mutex<HashMap<u64, Batch>>,
    next_batch: AtomicU64,
}

/// The connection and its publishing channel, and the reconnection backoff.
struct Link {
    current: Option<Arc<Session>>,
    failures: u32,
    backoff: Backoff,
    retry_at: Option<Instant>,
}

struct Session {
    connection: Arc<Connection>,
    /// In confirm mode; used for nothing but publishing.
    publisher: Channel,
}

/// One claim's deliveries, on a channel of their own.
struct Batch {
    node: NodeId,
    channel: Channel,
    /// Unsettled deliveries: AMQP delivery tag → job.
    open: BTreeMap<u64, JobId>,
}

impl std::fmt::Debug for RabbitMqQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqQueue")
            .field("host", &self.inner.uri.authority.host)
            .field("port", &self.inner.uri.authority.port)
            .field("vhost", &self.inner.uri.vhost)
            .field("name", &self.inner.name)
            .finish()
    }
}

impl RabbitMqQueue {
    /// The queue `name` on the broker of `settings`. Connects lazily: the first operation (or
    /// [`connect`](Self::connect)) opens the connection and declares the queue.
    pub fn new(settings: &RabbitMqSettings, name: impl Into<String>) -> Result<Self, ConfigError> {
        settings.validate()?;
        let mut uri: AMQPUri = settings.url.parse().map_err(|e| ConfigError::Invalid {
            key: "rabbitmq.url",
            reason: format!("not an AMQP URL: {e}"),
        })?;
        if settings.heartbeat_s > 0 {
            uri.query.heartbeat = Some(settings.heartbeat_s);
        }
        uri.query.connection_timeout = Some(settings.connect_timeout_ms);
        Ok(Self {
            inner: Arc::new(Inner {
                uri,
                settings: settings.clone(),
                name: name.into(),
                link: tokio::sync::Mutex::new(Link {
                    current: None,
                    failures: 0,
                    backoff: Backoff::new(
                        Duration::from_millis(settings.reconnect_min_ms),
                        Duration::from_millis(settings.reconnect_max_ms),
                    ),
                    retry_at: None,
                }),
                batches: Mutex::new(HashMap::new()),
                next_batch: AtomicU64::new(1),
            }),
        })
    }

    /// The queue's name on the broker.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Connects now (if not connected) and declares the queue.
    pub async fn connect(&self) -> Result<(), QueueError> {
        self.session(self.connect_deadline()).await.map(drop)
    }

    /// Deletes the queue and every message in it; returns how many messages it held.
    pub async fn delete(&self) -> Result<u64, QueueError> {
        let session = self.session(self.connect_deadline()).await?;
        let channel = session
            .connection
            .create_channel()
            .await
            .map_err(|e| broker("open a channel", e))?;
        let deleted = channel
            .queue_delete(self.name().into(), QueueDeleteOptions::default())
            .await
            .map_err(|e| broker("delete the queue", e));
        close(&channel).await;
        Ok(u64::from(deleted?))
    }

    /// Closes the connection; the broker requeues every unsettled delivery. The next
    /// operation connects again.
    pub async fn close(&self) {
        self.batches().clear();
        let session = self.inner.link.lock().await.current.take();
        if let Some(session) = session {
            let _ = session.connection.close(200, "closing".into()).await;
        }
    }

    fn batches(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Batch>> {
        // Every critical section is a few infallible map operations: poisoning is ignored.
        self.inner.batches.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn connect_deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.inner.settings.connect_timeout_ms)
    }

    /// The live connection, reconnecting (after the backoff delay) if it was lost. Fails when
    /// no connection can be had before `deadline`.
    async fn session(&self, deadline: Instant) -> Result<Arc<Session>, QueueError> {
        let attempt = async {
            let mut link = self.inner.link.lock().await;
            if let Some(session) = &link.current {
                if session.connection.status().connected() {
                    if session.publisher.status().connected() {
                        return Ok(session.clone());
                    }
                    // A channel error closed the publishing channel: open another one.
                    let publisher = self.open_publisher(&session.connection).await?;
                    let session = Arc::new(Session {
                        connection: session.connection.clone(),
                        publisher,
                    });
                    link.current = Some(session.clone());
                    return Ok(session);
                }
                warn!(queue = %self.name(), "connection to RabbitMQ lost; reconnecting");
                link.current = None;
            }
            if let Some(at) = link.retry_at {
                if at > deadline {
                    return Err(QueueError::Broker(format!(
                        "RabbitMQ unreachable ({} failed attempts); next attempt in {} ms",
                        link.failures,
                        at.saturating_duration_since(Instant::now()).as_millis()
                    )));
                }
                tokio::time::sleep_until(at).await;
            }
            let timeout = Duration::from_millis(self.inner.settings.connect_timeout_ms);
            let opened = match tokio::time::timeout(timeout, self.open()).await {
                Ok(opened) => opened,
                Err(_) => Err(QueueError::Broker(format!(
                    "connecting took longer than {} ms",
                    timeout.as_millis()
                ))),
            };
            match opened {
                Ok(session) => {
                    info!(
                        queue = %self.name(),
                        host = %self.inner.uri.authority.host,
                        failed_attempts = link.failures,
                        "connected to RabbitMQ"
                    );
                    link.failures = 0;
                    link.backoff.reset();
                    link.retry_at = None;
                    link.current = Some(session.clone());
                    Ok(session)
                }
                Err(e) => {
                    link.failures += 1;
                    let delay = link.backoff.next_delay();
                    link.retry_at = Some(Instant::now() + delay);
                    warn!(
                        queue = %self.name(),
                        error = %e,
                        attempt = link.failures,
                        retry_in_ms = delay.as_millis() as u64,
                        "cannot connect to RabbitMQ"
                    );
                    Err(e)
                }
            }
        };
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(result) => result,
            Err(_) => Err(QueueError::Broker(
                "no connection to RabbitMQ in time".into(),
            )),
        }
    }

    async fn open(&self) -> Result<Arc<Session>, QueueError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("runfleet {}", self.name()).into());
        let connection = Connection::connect_uri(self.inner.uri.clone(), properties)
            .await
            .map_err(|e| broker("connect", e))?;
        let publisher = self.open_publisher(&connection).await?;
        Ok(Arc::new(Session {
            connection: Arc::new(connection),
            publisher,
        }))
    }

    /// A channel in confirm mode, after declaring the durable queue on it.
    async fn open_publisher(&self, connection: &Connection) -> Result<Channel, QueueError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| broker("open the publishing channel", e))?;
        self.declare(&channel).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| broker("enable publisher confirms", e))?;
        Ok(channel)
    }

    /// Declares the durable queue (a no-op when it exists).
    async fn declare(&self, channel: &Channel) -> Result<(), QueueError> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        self.declare_with(channel, durable, "declare the queue")
            .await
    }

    /// `queue.declare` of this queue with `options` on `channel` (`doing` names it in errors).
    async fn declare_with(
        &self,
        channel: &Channel,
        options: QueueDeclareOptions,
        doing: &str,
    ) -> Result<(), QueueError> {
        channel
            .queue_declare(self.name().into(), options, FieldTable::default())
            .await
            .map(drop)
            .map_err(|e| broker(doing, e))
    }

    /// Publishes every id and waits for all their confirms.
    async fn publish(&self, session: &Session, jobs: &[JobId]) -> Result<(), QueueError> {
        let mut confirms = Vec::with_capacity(jobs.len());
        for job in jobs {
            let properties = BasicProperties::default()
                .with_delivery_mode(PERSISTENT)
                .with_message_id(job.as_str().into());
            let confirm = session
                .publisher
                .basic_publish(
                    "".into(),
                    self.name().into(),
                    BasicPublishOptions {
                        // An unroutable message (no queue) comes back instead of vanishing.
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    job.as_str().as_bytes(),
                    properties,
                )
                .await
                .map_err(|e| broker("publish", e))?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            match confirm.await.map_err(|e| broker("publisher confirm", e))? {
                Confirmation::Ack(None) => {}
                Confirmation::Ack(Some(returned)) => {
                    // No queue to route to (deleted by hand?): declare it again for the retry.
                    if let Err(e) = self.declare(&session.publisher).await {
                        warn!(queue = %self.name(), error = %e, "could not declare the queue again");
                    }
                    return Err(QueueError::Broker(format!(
                        "message returned by the broker: {} {}",
                        returned.reply_code, returned.reply_text
                    )));
                }
                Confirmation::Nack(_) => {
                    return Err(QueueError::Broker("the broker refused a message".into()));
                }
                Confirmation::NotRequested => {
                    return Err(QueueError::Broker(
                        "publishing channel is not in confirm mode".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Consumes on `channel` with prefetch `max` until the first delivery or `until`, then
    /// cancels the consumer and returns everything delivered to it.
    async fn take(
        &self,
        channel: &Channel,
        node: &NodeId,
        batch: u64,
        max: u16,
        until: Instant,
    ) -> Result<Vec<lapin::message::Delivery>, QueueError> {
        channel
            .basic_qos(max, BasicQosOptions { global: false })
            .await
            .map_err(|e| broker("set the prefetch", e))?;
        let tag = format!("{node}/{batch}");
        let mut consumer = channel
            .basic_consume(
                self.name().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| broker("consume", e))?;
        let mut taken = Vec::new();
        if Instant::now() < until {
            match tokio::time::timeout_at(until, consumer.next()).await {
                Err(_) => {}
                Ok(Some(Ok(delivery))) => taken.push(delivery),
                Ok(Some(Err(e))) => return Err(broker("consume", e)),
                Ok(None) => {
                    return Err(QueueError::Broker(
                        "the broker cancelled the consumer (queue deleted?)".into(),
                    ));
                }
            }
        }
        // Whatever the broker delivered before it handled the cancel is ours: at most `max`.
        channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await
            .map_err(|e| broker("cancel the consumer", e))?;
        let drain = async {
            while let Some(delivery) = consumer.next().await {
                taken.push(delivery.map_err(|e| broker("consume", e))?);
            }
            Ok::<_, QueueError>(())
        };
        let grace = Duration::from_millis(self.inner.settings.connect_timeout_ms);
        match tokio::time::timeout(grace, drain).await {
            Ok(drained) => drained?,
            Err(_) => return Err(QueueError::Broker("consumer did not end".into())),
        }
        Ok(taken)
    }

    /// Makes sure the broker has handled every nack sent on `channel` before this returns: a
    /// passive declare on the same channel is answered after them.
    async fn settle(&self, channel: &Channel) -> Result<(), QueueError> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        self.declare_with(channel, passive, "sync with the broker")
            .await
    }

    /// Takes `deliveries` out of their batches; returns them per batch channel, and whether
    /// that batch is now settled (and must be closed).
    fn detach(&self, deliveries: &[Delivery]) -> Vec<(Channel, Vec<u64>, bool)> {
        let mut per_batch: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for d in deliveries {
            per_batch
                .entry(d.tag >> TAG_BITS)
                .or_default()
                .push(d.tag & ((1 << TAG_BITS) - 1));
        }
        let mut batches = self.batches();
        let mut out = Vec::new();
        for (id, tags) in per_batch {
            let Some(batch) = batches.get_mut(&id) else {
                continue;
            };
            let tags: Vec<u64> = tags
                .into_iter()
                .filter(|t| batch.open.remove(t).is_some())
                .collect();
            let settled = batch.open.is_empty();
            let channel = if settled {
                batches.remove(&id).map(|b| b.channel)
            } else {
                Some(batch.channel.clone())
            };
            if let Some(channel) = channel {
                out.push((channel, tags, settled));
            }
        }
        out
    }
}

/// Closes a channel, ignoring errors (a dead channel is closed already).
async fn close(channel: &Channel) {
    if channel.status().connected() {
        let _ = channel.close(200, "done".into()).await;
    }
}

impl JobQueue for RabbitMqQueue {
    async fn enqueue(&self, jobs: &[JobId]) -> Result<(), QueueError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let timeout = Duration::from_millis(self.inner.settings.confirm_timeout_ms);
        let deadline = Instant::now() + timeout;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let attempt = async {
                let session = self.session(deadline).await?;
                self.publish(&session, jobs).await
            };
            let error = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(())) => {
                    if attempts > 1 {
                        info!(queue = %self.name(), attempts, "jobs published after retrying");
                    }
                    return Ok(());
                }
                Ok(Err(e)) => e,
                Err(_) => QueueError::Broker(format!(
                    "not confirmed by the broker within {} ms",
                    timeout.as_millis()
                )),
            };
            if Instant::now() >= deadline {
                return Err(error);
            }
            debug!(queue = %self.name(), error = %error, attempts, "publish failed; retrying");
            // Before the next attempt: a dead connection is replaced by `session` (with
            // backoff); a live one whose publish failed is given a moment.
            tokio::time::sleep(Duration::from_millis(self.inner.settings.reconnect_min_ms)).await;
        }
    }

    async fn claim(
        &self,
        node: &NodeId,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let until = Instant::now() + wait;
        let session = self.session(until + CLAIM_CONNECT_GRACE).await?;
        let channel = session
            .connection
            .create_channel()
            .await
            .map_err(|e| broker("open a consumer channel", e))?;
        let batch = self.inner.next_batch.fetch_add(1, Ordering::Relaxed);
        let prefetch = u16::try_from(max).unwrap_or(u16::MAX);
        let taken = match self.take(&channel, node, batch, prefetch, until).await {
            Ok(taken) => taken,
            Err(e) => {
                // Closing the channel gives back whatever it had received.
                close(&channel).await;
                return Err(e);
            }
        };
        let mut open = BTreeMap::new();
        let mut out = Vec::with_capacity(taken.len());
        for delivery in taken {
            let tag = delivery.delivery_tag;
            match String::from_utf8(delivery.data) {
                Ok(id) if !id.is_empty() && tag < (1 << TAG_BITS) => {
                    let job = JobId::new(id);
                    out.push(Delivery {
                        job_id: job.clone(),
                        tag: (batch << TAG_BITS) | tag,
                    });
                    open.insert(tag, job);
                }
                _ => {
                    // Not a job id: nothing can ever claim it. Dead-lettered if the operator
                    // configured it, dropped otherwise.
                    warn!(queue = %self.name(), tag, "rejecting a message that is not a job id");
                    let reject = BasicRejectOptions { requeue: false };
                    if let Err(e) = channel.basic_reject(tag, reject).await {
                        warn!(queue = %self.name(), error = %e, "reject failed");
                    }
                }
            }
        }
        if open.is_empty() {
            close(&channel).await;
            return Ok(Vec::new());
        }
        self.batches().insert(
            batch,
            Batch {
                node: node.clone(),
                channel,
                open,
            },
        );
        Ok(out)
    }

    async fn ack(&self, _node: &NodeId, deliveries: &[Delivery]) -> Result<(), QueueError> {
        let mut failed = None;
        for (channel, tags, settled) in self.detach(deliveries) {
            for tag in tags {
                if let Err(e) = channel.basic_ack(tag, BasicAckOptions::default()).await {
                    // The channel is gone, so the broker has requeued the delivery; the claim
                    // script drops it when it comes again.
                    failed = Some(e);
                }
            }
            if settled {
                close(&channel).await;
            }
        }
        match failed {
            None => Ok(()),
            Some(e) => Err(broker("ack (the broker will deliver the job again)", e)),
        }
    }

    async fn release(&self, _node: &NodeId, deliveries: &[Delivery]) -> Result<(), QueueError> {
        let mut failed = None;
        for (channel, tags, settled) in self.detach(deliveries) {
            if !channel.status().connected() {
                // Its connection is gone: the broker has requeued these already.
                continue;
            }
            let requeue = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            for tag in tags {
                if let Err(e) = channel.basic_nack(tag, requeue).await {
                    failed = Some(broker("nack", e));
                }
            }
            if let Err(e) = self.settle(&channel).await {
                failed = Some(e);
            }
            if settled {
                close(&channel).await;
            }
        }
        failed.map_or(Ok(()), Err)
    }

    async fn remove(&self, _job: &JobId) -> Result<bool, QueueError> {
        // AMQP cannot remove a message by content; the claim script drops a stopped job.
        Ok(false)
    }

    async fn depth(&self) -> Result<u64, QueueError> {
        let session = self.session(self.connect_deadline()).await?;
        let channel = session
            .connection
            .create_channel()
            .await
            .map_err(|e| broker("open a channel", e))?;
        let declared = channel
            .queue_declare(
                self.name().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| broker("passive declare", e));
        close(&channel).await;
        Ok(u64::from(declared?.message_count()))
    }

    async fn recover(&self, node: &NodeId) -> Result<u64, QueueError> {
        let held: Vec<Batch> = {
            let mut batches = self.batches();
            let ids: Vec<u64> = batches
                .iter()
                .filter(|(_, b)| b.node == *node)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| batches.remove(&id))
                .collect()
        };
        let mut returned = 0;
        let mut failed = None;
        for batch in held {
            returned += batch.open.len() as u64;
            if !batch.channel.status().connected() {
                continue; // the broker requeued them when the connection dropped
            }
            // Tag 0 with `multiple`: every unacked delivery of the channel, including any that
            // raced the consumer's cancel.
            let all = BasicNackOptions {
                multiple: true,
                requeue: true,
            };
            if let Err(e) = batch.channel.basic_nack(0, all).await {
                failed = Some(broker("nack", e));
            } else if let Err(e) = self.settle(&batch.channel).await {
                failed = Some(e);
            }
            close(&batch.channel).await;
        }
        if let Some(e) = failed {
            // Closing the channels gave the deliveries back in any case.
            warn!(queue = %self.name(), node = %node, error = %e, "recover: nack failed; closed the channels instead");
        }
        Ok(returned)
    }
}
