//! Admissions that arrive together go to Redis together: the store's single admissions
//! ([`JobStore::admit`](super::JobStore::admit), one per `POST /v1/runners`) are gathered into
//! calls of the batch admission function (`store_admit_many.lua`), as many as are waiting when
//! a call can leave, at most [`ADMIT_CHUNK`] per call and [`IN_FLIGHT`] calls at once.
//!
//! Nothing waits to make a batch: an admission that finds a call free leaves at once, alone,
//! so an idle fleet's starts take the same one round trip as before. Under load the admissions
//! that arrive while the calls are busy leave together in the next one, which pays the call's
//! own cost (the round trip, the function call and its context arguments, Redis' reading and
//! writing of the socket) once for all of them: that is what made Redis' CPU per HTTP start
//! half again BullMQ's, whose client pipelines every `queue.add` on one connection.
//!
//! Each admission is still decided on its own, atomically, in the order they arrived, and
//! answered on its own: the batch function runs exactly the single admission's code per job.
//! A call that fails fails each of its admissions with the same error, as each single call
//! would have; a caller that gives up waiting leaves its admission to be decided (as a dropped
//! single call was). Why not a crate: the whole of it is one channel and one loop, and the
//! batching that matters (what one Redis call may carry) is the store's own.

use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::StoreError;
use super::redis::{ADMIT_CHUNK, AdmitReply, RedisStore};

/// Admission calls in flight at once per store. More calls at once make smaller batches; fewer
/// make admissions wait for a call. Four keep a store's multiplexed connections busy.
const IN_FLIGHT: usize = 4;
/// Admissions that may wait for a call: beyond it a caller waits to be queued (backpressure).
const WAITING_MAX: usize = 4_096;

/// One admission waiting for its call: the arguments `store_admit_many.lua` takes per job (job
/// id, user, strategy id, spec JSON, breaker decision, checked), and where its answer goes.
struct Pending {
    args: [String; 6],
    answer: oneshot::Sender<Result<AdmitReply, StoreError>>,
}

/// A store's admission gatherer. Clones of a store share it; a store built from another with
/// other settings gets its own (see `RedisStore::with_context`).
#[derive(Debug, Default)]
pub(super) struct Admissions {
    /// The gathering task's inbox, started on the first admission (it needs a runtime), and
    /// again if the runtime it ran on has gone (a test's runtime, dropped with its task).
    inbox: Mutex<Option<mpsc::Sender<Pending>>>,
}

impl Admissions {
    /// Admits the job of `args` through `store`'s gathered calls and answers its reply.
    pub(super) async fn admit(
        &self,
        store: &RedisStore,
        args: [String; 6],
    ) -> Result<AdmitReply, StoreError> {
        let (answer, reply) = oneshot::channel();
        let mut pending = Pending { args, answer };
        // Twice at most: a closed inbox means its task has gone, and nothing sent to it ran.
        for _ in 0..2 {
            let inbox = self.inbox(store);
            match inbox.send(pending).await {
                Ok(()) => {
                    return reply.await.unwrap_or_else(|_| {
                        // The task went away with the call in flight (its runtime is shutting
                        // down): the outcome is unknown, as with a call whose answer was lost.
                        Err(unavailable("the admission's call ended without an answer"))
                    });
                }
                Err(mpsc::error::SendError(back)) => {
                    pending = back;
                    self.forget(&inbox);
                }
            }
        }
        Err(unavailable("the admission gatherer could not be started"))
    }

    fn inbox(&self, store: &RedisStore) -> mpsc::Sender<Pending> {
        let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        match &*inbox {
            Some(tx) if !tx.is_closed() => tx.clone(),
            _ => {
                let (tx, rx) = mpsc::channel(WAITING_MAX);
                tokio::spawn(gather(store.for_gathering(), rx));
                *inbox = Some(tx.clone());
                tx
            }
        }
    }

    fn forget(&self, closed: &mpsc::Sender<Pending>) {
        let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        if inbox.as_ref().is_some_and(|tx| tx.same_channel(closed)) {
            *inbox = None;
        }
    }
}

/// The store unavailable for `why` (answered 503 with Retry-After by the API).
fn unavailable(why: &str) -> StoreError {
    StoreError::Unavailable(crate::redis_pool::RedisError::Pool(why.to_owned()))
}

/// The gathering loop: waits for a free call, then sends every admission waiting (up to
/// [`ADMIT_CHUNK`]) in it. Ends when every store sharing the inbox is gone.
async fn gather(store: RedisStore, mut inbox: mpsc::Receiver<Pending>) {
    let calls = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        // The call first: while every call is busy, admissions gather in the inbox.
        let Ok(call) = calls.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = inbox.recv().await else {
            return;
        };
        let mut batch = Vec::with_capacity(ADMIT_CHUNK);
        batch.push(first);
        while batch.len() < ADMIT_CHUNK {
            match inbox.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        metrics::histogram!(crate::observability::ADMISSION_BATCH).record(batch.len() as f64);
        let store = store.clone();
        tokio::spawn(async move {
            let (args, answers): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.args, p.answer)).unzip();
            match store.admit_args_now(&args).await {
                Ok(replies) => {
                    for (answer, reply) in answers.into_iter().zip(replies) {
                        let _ = answer.send(Ok(reply));
                    }
                }
                Err(e) => {
                    for answer in answers {
                        let _ = answer.send(Err(e.clone()));
                    }
                }
            }
            drop(call);
        });
    }
}
