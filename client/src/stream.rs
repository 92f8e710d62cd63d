//! [`TaskStream`]: a `Stream` fed by a background task that stops when the stream is dropped.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;

/// Items produced by a background task; dropping the stream aborts the task.
pub struct TaskStream<T> {
    pub(crate) rx: mpsc::Receiver<T>,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

impl<T> Drop for TaskStream<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<T> Stream for TaskStream<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.rx.poll_recv(cx)
    }
}

impl<T> std::fmt::Debug for TaskStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskStream").finish_non_exhaustive()
    }
}
