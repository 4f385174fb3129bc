//! Group commit: tasks hand their writes to one writing task and wait for their answers; the
//! writing task takes everything that is waiting, writes it together (one transaction or one
//! statement, whatever the number) and answers each.
//!
//! Nothing waits on a timer: a batch is whatever arrived while the previous one was being
//! written, so a lone write goes out at once (a batch of one) and a busy worker writes many
//! per commit. The worker batches its claims ([`crate::claims`]) and its pure-step
//! checkpoints and run ends ([`crate::checkpoints`]) this way.

use shared_models::db::StorageError;
use std::future::Future;
use tokio::sync::{mpsc, oneshot};

type Reply<R> = oneshot::Sender<Result<R, StorageError>>;

/// The handle the tasks use; cheap to clone. The writing task ends when every handle is
/// dropped.
pub struct Batches<W, R> {
    tx: mpsc::UnboundedSender<(W, Reply<R>)>,
    what: &'static str,
}

impl<W, R> Clone for Batches<W, R> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            what: self.what,
        }
    }
}

impl<W: Send + 'static, R: Send + 'static> Batches<W, R> {
    /// Start the writing task (on the current tokio runtime). `write` gets up to `max` writes
    /// and answers each, in their order; a write it leaves unanswered gets an error.
    /// `what` names the writer in that error ("the checkpoint writer").
    pub fn start<F, Fut>(what: &'static str, max: usize, mut write: F) -> Self
    where
        F: FnMut(Vec<W>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<Result<R, StorageError>>> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<(W, Reply<R>)>();
        tokio::spawn(async move {
            let mut waiting = Vec::with_capacity(max);
            while rx.recv_many(&mut waiting, max).await > 0 {
                let (writes, replies): (Vec<W>, Vec<Reply<R>>) = waiting.drain(..).unzip();
                let answers = write(writes).await;
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(answer);
                }
            }
        });
        Self { tx, what }
    }

    /// Hand `write` to the writing task; returns its answer once it is written (or not).
    pub async fn submit(&self, write: W) -> Result<R, StorageError> {
        let stopped = || StorageError::Unavailable(format!("{} has stopped", self.what));
        let (reply, answer) = oneshot::channel();
        self.tx.send((write, reply)).map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// The answers of a batch of `n` writes: each its own, or, when the whole batch failed, its
/// error for every one of them.
pub fn answers<R>(
    n: usize,
    batch: Result<Vec<Result<R, StorageError>>, StorageError>,
) -> Vec<Result<R, StorageError>> {
    match batch {
        Ok(answers) => answers,
        Err(e) => (0..n).map(|_| Err(copy(&e))).collect(),
    }
}

/// The batch's error, for each of its writes (diesel's errors cannot be cloned).
fn copy(e: &StorageError) -> StorageError {
    match e {
        StorageError::Unavailable(cause) => StorageError::Unavailable(cause.clone()),
        StorageError::Query(cause) => StorageError::Query(
            diesel::result::Error::QueryBuilderError(cause.to_string().into()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn each_write_gets_its_own_answer_and_waiting_writes_go_together() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let open = gate.clone();
        let doubler = Batches::start("the doubler", 8, move |writes: Vec<u32>| {
            seen.lock().unwrap().push(writes.len());
            let gate = gate.clone();
            async move {
                // The first batch waits until everything else has queued up behind it.
                let _ = gate.acquire().await;
                writes.into_iter().map(|w| Ok(w * 2)).collect()
            }
        });
        let first = tokio::spawn({
            let d = doubler.clone();
            async move { d.submit(1).await }
        });
        tokio::task::yield_now().await;
        while sizes.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let rest: Vec<_> = (2..=11)
            .map(|i| {
                let d = doubler.clone();
                tokio::spawn(async move { d.submit(i).await })
            })
            .collect();
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        open.add_permits(100);
        assert_eq!(first.await.unwrap().unwrap(), 2);
        for (i, task) in (2..=11).zip(rest) {
            assert_eq!(task.await.unwrap().unwrap(), i * 2);
        }
        // 1 alone, then the 10 that waited: 8 (the most per batch) and 2.
        assert_eq!(*sizes.lock().unwrap(), vec![1, 8, 2]);
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_write_and_an_unanswered_write_is_an_error() {
        let failing = Batches::start("the failing writer", 4, |writes: Vec<u32>| async move {
            answers::<u32>(
                writes.len(),
                Err(StorageError::Unavailable("database away".into())),
            )
        });
        let e = failing.submit(1).await.unwrap_err();
        assert!(
            matches!(e, StorageError::Unavailable(ref m) if m == "database away"),
            "{e}"
        );
        let silent = Batches::start("the silent writer", 4, |_: Vec<u32>| async move {
            Vec::<Result<u32, StorageError>>::new()
        });
        let e = silent.submit(1).await.unwrap_err();
        assert!(
            e.to_string().contains("the silent writer has stopped"),
            "{e}"
        );
    }
}
