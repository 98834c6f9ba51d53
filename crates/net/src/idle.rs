//! A stream whose writes give up when the peer stops reading.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

pin_project! {
    /// `inner`, with a write or flush that makes no progress for `timeout` failing with
    /// `TimedOut`: a client that stops reading an answer releases its connection. Reads
    /// pass through untouched (hyper bounds the wait for request headers, and a request
    /// body's wait is bounded per frame), so a server busy computing an answer is never
    /// taken for an idle one.
    pub struct IdleTimeout<S> {
        #[pin]
        inner: S,
        sleep: Pin<Box<Sleep>>,
        timeout: Duration,
        last: Instant,
    }
}

impl<S> IdleTimeout<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, timeout: Duration) -> Self {
        let now = Instant::now();
        IdleTimeout {
            inner,
            sleep: Box::pin(tokio::time::sleep_until(now + timeout)),
            timeout,
            last: now,
        }
    }
}

/// What a write or flush that returned `poll` becomes: a step forward restarts the clock;
/// `Pending` stays pending, or times out when nothing moved for the whole timeout.
fn progress<T>(
    poll: Poll<io::Result<T>>,
    mut sleep: Pin<&mut Sleep>,
    last: &mut Instant,
    timeout: Duration,
    cx: &mut Context<'_>,
) -> Poll<io::Result<T>> {
    if poll.is_ready() {
        *last = Instant::now();
        return poll;
    }
    let deadline = *last + timeout;
    if sleep.deadline() != deadline {
        sleep.as_mut().reset(deadline);
    }
    match sleep.poll(cx) {
        Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the peer read nothing for {timeout:?}"),
        ))),
        Poll::Pending => Poll::Pending,
    }
}

use std::future::Future as _;

impl<S: AsyncRead> AsyncRead for IdleTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<S: AsyncWrite> AsyncWrite for IdleTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let poll = this.inner.poll_write(cx, buf);
        progress(poll, this.sleep.as_mut(), this.last, *this.timeout, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let poll = this.inner.poll_write_vectored(cx, bufs);
        progress(poll, this.sleep.as_mut(), this.last, *this.timeout, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let poll = this.inner.poll_flush(cx);
        progress(poll, this.sleep.as_mut(), this.last, *this.timeout, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_write_nobody_reads_times_out_and_one_that_moves_does_not() {
        // A pipe of 64 bytes: the first 64 go through, then writes wait on the reader.
        let (a, mut b) = tokio::io::duplex(64);
        let mut w = IdleTimeout::new(a, Duration::from_millis(200));
        let started = std::time::Instant::now();
        let err = w.write_all(&[0u8; 4096]).await.expect_err("nobody reads");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));

        // A reader that drains slowly but steadily keeps the writer alive past the timeout.
        let (a, mut b2) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let mut total = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                match tokio::io::AsyncReadExt::read(&mut b2, &mut buf).await {
                    Ok(0) | Err(_) => break total,
                    Ok(n) => total += n,
                }
            }
        });
        let mut w = IdleTimeout::new(a, Duration::from_millis(200));
        w.write_all(&[1u8; 1024]).await.expect("a steady reader");
        w.shutdown().await.expect("shutdown");
        drop(w);
        assert_eq!(reader.await.expect("reader"), 1024);
        let _ = tokio::io::AsyncReadExt::read(&mut b, &mut [0u8; 1]).await;
    }
}
