//! Coalescing of store calls: the claims of concurrent requests of one scheduler
//! ([`Claims::claim_batch`](crate::store::Claims::claim_batch)) and the instance writes of
//! concurrent builds of one conductor
//! ([`Instances::update_instances`](crate::store::Instances::update_instances)) go to the
//! store in batches.
//!
//! # Why
//! A claim or an instance write is one round trip (two for a Redis instance write: read,
//! then compare-and-set). When a scheduler serves many requests at once, or a conductor
//! runs many builds, their calls wait on the network one by one; a backend that can send
//! many in one round trip (a pipeline on Redis) answers a batch for about the price of one.
//! Each call in a batch is still atomic on its own (a claim on its tree, a write on its
//! instance) and gets its own answer, so a caller sees exactly what a lone call would have
//! told it.
//!
//! # How
//! Callers hand their call to one worker task and wait for its answer. The worker sends
//! whatever calls are queued (up to `max_batch`) as one batch and keeps at most
//! `in_flight` batches outstanding; while they are out, new calls queue up and form the
//! next batch. Nothing waits for a batch to fill: a lone call on an idle store goes at
//! once, so batching costs no latency and only grows with the load.
//!
//! A batch that fails as a whole (transport) fails each of its calls with a retryable
//! error of the same kind: the outcome of each is unknown and the caller handles it as it
//! handles a failed lone call (the scheduler releases the consumer after a timeout; the
//! conductor retries the write, which sets the same fields again).

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::{Error, Result};
use crate::model::{Claim, ClaimRequest, Instance, InstanceId, InstancePatch};
use crate::store::Store;

/// The store call a batcher makes for a batch: one answer per request, in order.
type Run<Q, A> = for<'a> fn(&'a dyn Store, &'a [Q]) -> BoxFuture<'a, Result<Vec<Result<A>>>>;

struct Job<Q, A> {
    request: Q,
    answer: oneshot::Sender<Result<A>>,
}

/// A coalescer of one kind of store call (see the module docs).
pub(crate) struct Batcher<Q, A> {
    tx: mpsc::UnboundedSender<Job<Q, A>>,
    /// The worker's end, until the first call starts the worker (inside the runtime).
    rx: Mutex<Option<mpsc::UnboundedReceiver<Job<Q, A>>>>,
    store: Arc<dyn Store>,
    max_batch: usize,
    in_flight: usize,
    run: Run<Q, A>,
    /// What the calls are, for errors and logs ("claims", "instance writes").
    what: &'static str,
}

/// A scheduler's claim coalescer.
pub(crate) type ClaimBatcher = Batcher<ClaimRequest, Claim>;

/// A conductor's instance-write coalescer.
pub(crate) type InstanceWriteBatcher = Batcher<(InstanceId, InstancePatch), Instance>;

impl ClaimBatcher {
    /// A batcher of at most `max_batch` claims per call and `in_flight` calls at once.
    pub(crate) fn claims(store: Arc<dyn Store>, max_batch: usize, in_flight: usize) -> Self {
        Batcher::new(store, max_batch, in_flight, |s, r| s.claim_batch(r), "claims")
    }

    /// Claims `request` in the next batch; the answer is the claim's own.
    pub(crate) async fn claim(&self, request: ClaimRequest) -> Result<Claim> {
        self.call(request).await
    }
}

impl InstanceWriteBatcher {
    /// A batcher of at most `max_batch` instance writes per call and `in_flight` calls at once.
    pub(crate) fn instance_writes(store: Arc<dyn Store>, max_batch: usize, in_flight: usize) -> Self {
        Batcher::new(store, max_batch, in_flight, |s, r| s.update_instances(r), "instance writes")
    }
}

impl<Q, A> std::fmt::Debug for Batcher<Q, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("what", &self.what)
            .field("max_batch", &self.max_batch)
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl<Q: Send + 'static, A: Send + 'static> Batcher<Q, A> {
    fn new(store: Arc<dyn Store>, max_batch: usize, in_flight: usize, run: Run<Q, A>, what: &'static str) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Batcher {
            tx,
            rx: Mutex::new(Some(rx)),
            store,
            max_batch: max_batch.max(1),
            in_flight: in_flight.max(1),
            run,
            what,
        }
    }

    /// Sends `request` in the next batch; the answer is the call's own.
    pub(crate) async fn call(&self, request: Q) -> Result<A> {
        let start = super::lock(&self.rx).take();
        if let Some(rx) = start {
            let w = Worker {
                store: self.store.clone(),
                max_batch: self.max_batch,
                in_flight: self.in_flight,
                run: self.run,
                what: self.what,
            };
            tokio::spawn(w.run(rx));
        }
        let (answer, wait) = oneshot::channel();
        if self.tx.send(Job { request, answer }).is_err() {
            return Err(gone(self.what));
        }
        wait.await.unwrap_or_else(|_| Err(gone(self.what)))
    }
}

/// The worker stopped (its runtime is shutting down): nothing was sent for this call.
fn gone(what: &str) -> Error {
    Error::Unavailable { backend: "scheduler", message: format!("the batcher of {what} has stopped") }
}

struct Worker<Q, A> {
    store: Arc<dyn Store>,
    max_batch: usize,
    in_flight: usize,
    run: Run<Q, A>,
    what: &'static str,
}

impl<Q: Send + 'static, A: Send + 'static> Worker<Q, A> {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Job<Q, A>>) {
        let slots = Arc::new(Semaphore::new(self.in_flight));
        while let Some(first) = rx.recv().await {
            // Wait for a free slot before draining: calls that arrive meanwhile join this batch.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let mut jobs = vec![first];
            while jobs.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            let (store, run, what) = (self.store.clone(), self.run, self.what);
            tokio::spawn(async move {
                let (requests, answers): (Vec<Q>, Vec<_>) = jobs.into_iter().map(|j| (j.request, j.answer)).unzip();
                match run(&*store, &requests).await {
                    Ok(results) if results.len() == answers.len() => {
                        for (answer, result) in answers.into_iter().zip(results) {
                            let _ = answer.send(result);
                        }
                    }
                    Ok(results) => {
                        let message = format!("{} answers to a batch of {} {what}", results.len(), answers.len());
                        tracing::error!(%message, "a batch answered the wrong number of results");
                        for answer in answers {
                            let _ = answer.send(Err(Error::Unavailable { backend: "store", message: message.clone() }));
                        }
                    }
                    Err(e) => {
                        for answer in answers {
                            let _ = answer.send(Err(echo(&e, what)));
                        }
                    }
                }
                drop(slot);
            });
        }
    }
}

/// The failure of a whole batch, for each of its calls: the same kind when it is a
/// timeout (outcome unknown: the scheduler releases the consumer), else unavailable (the
/// call may or may not have been made; the caller moves on or retries).
fn echo(e: &Error, what: &str) -> Error {
    match e {
        Error::Timeout { backend, message } => Error::Timeout { backend, message: message.clone() },
        Error::Unavailable { backend, message } => Error::Unavailable { backend, message: message.clone() },
        other => Error::Timeout { backend: "store", message: format!("a batch of {what} failed: {other}") },
    }
}
