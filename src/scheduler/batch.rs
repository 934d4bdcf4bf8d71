//! Claim coalescing: the claims of concurrent requests of one scheduler go to the store in
//! batches ([`Claims::claim_batch`](crate::store::Claims::claim_batch)).
//!
//! # Why
//! A claim is one round trip. When a scheduler serves many requests at once, their claims
//! wait on the network one by one; a backend that can send many claims in one round trip
//! (a pipeline of scripts on Redis) answers a batch for about the price of one. Each claim
//! in a batch is still all-or-nothing on its own tree and gets its own answer, so a
//! request sees exactly what a lone claim would have told it.
//!
//! # How
//! Requests hand their claim to one worker task and wait for its answer. The worker sends
//! whatever claims are queued (up to `max_batch`) as one batch and keeps at most
//! `in_flight` batches outstanding; while they are out, new claims queue up and form the
//! next batch. Nothing waits for a batch to fill: a lone claim on an idle store goes at
//! once, so batching costs no latency and only grows with the load.
//!
//! A batch that fails as a whole (transport) fails each of its claims with a retryable
//! error of the same kind: the outcome of each is unknown and the scheduler handles it as
//! it handles a failed lone claim (it releases the consumer after a timeout).

use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::{Error, Result};
use crate::model::{Claim, ClaimRequest};
use crate::store::Store;

struct Job {
    request: ClaimRequest,
    answer: oneshot::Sender<Result<Claim>>,
}

/// A scheduler's claim coalescer (see the module docs).
pub(crate) struct ClaimBatcher {
    tx: mpsc::UnboundedSender<Job>,
    /// The worker's end, until the first claim starts the worker (inside the runtime).
    rx: Mutex<Option<mpsc::UnboundedReceiver<Job>>>,
    store: Arc<dyn Store>,
    max_batch: usize,
    in_flight: usize,
}

impl ClaimBatcher {
    /// A batcher of at most `max_batch` claims per call and `in_flight` calls at once.
    pub(crate) fn new(store: Arc<dyn Store>, max_batch: usize, in_flight: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        ClaimBatcher { tx, rx: Mutex::new(Some(rx)), store, max_batch: max_batch.max(1), in_flight: in_flight.max(1) }
    }

    /// Claims `request` in the next batch; the answer is the claim's own.
    pub(crate) async fn claim(&self, request: ClaimRequest) -> Result<Claim> {
        let start = super::lock(&self.rx).take();
        if let Some(rx) = start {
            tokio::spawn(worker(self.store.clone(), rx, self.max_batch, self.in_flight));
        }
        let (answer, wait) = oneshot::channel();
        if self.tx.send(Job { request, answer }).is_err() {
            return Err(gone());
        }
        wait.await.unwrap_or_else(|_| Err(gone()))
    }
}

/// The worker stopped (its runtime is shutting down): nothing was sent for this claim.
fn gone() -> Error {
    Error::Unavailable { backend: "scheduler", message: "the claim batcher has stopped".into() }
}

async fn worker(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<Job>, max_batch: usize, in_flight: usize) {
    let slots = Arc::new(Semaphore::new(in_flight));
    while let Some(first) = rx.recv().await {
        // Wait for a free slot before draining: claims that arrive meanwhile join this batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let store = store.clone();
        tokio::spawn(async move {
            let requests: Vec<ClaimRequest> = jobs.iter().map(|j| j.request.clone()).collect();
            match store.claim_batch(&requests).await {
                Ok(results) if results.len() == jobs.len() => {
                    for (job, result) in jobs.into_iter().zip(results) {
                        let _ = job.answer.send(result);
                    }
                }
                Ok(results) => {
                    let message = format!("{} answers to a batch of {} claims", results.len(), jobs.len());
                    tracing::error!(%message, "claim batch answered the wrong number of results");
                    for job in jobs {
                        let _ = job.answer.send(Err(Error::Unavailable { backend: "store", message: message.clone() }));
                    }
                }
                Err(e) => {
                    for job in jobs {
                        let _ = job.answer.send(Err(echo(&e)));
                    }
                }
            }
            drop(slot);
        });
    }
}

/// The failure of a whole batch, for each of its claims: the same kind when it is a
/// timeout (outcome unknown: the scheduler releases the consumer), else unavailable (the
/// claim may or may not have been made; the scheduler moves on to another host).
fn echo(e: &Error) -> Error {
    match e {
        Error::Timeout { backend, message } => Error::Timeout { backend, message: message.clone() },
        Error::Unavailable { backend, message } => Error::Unavailable { backend, message: message.clone() },
        other => Error::Timeout { backend: "store", message: format!("a batch of claims failed: {other}") },
    }
}
