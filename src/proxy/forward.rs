//! The data path. Accepting never waits on anything but the socket; a connection to an awake,
//! ready app is dialled and forwarded at once (no API request); any other connection is held,
//! within `--max-held` and `--max-wait`, until the app is awake, ready and answers a dial. Bytes
//! are copied both ways by tokio's `copy_bidirectional` (8 KiB per direction); a held connection
//! has no buffer at all.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::ErrorLog;
use super::metrics::{DialFailure, HoldOutcome, ProxyMetrics};
use super::readiness::Readiness;
use super::route::{Dialer, Upstream};
use super::scale::{Activity, ScaleView};

/// What every connection task shares.
pub struct Shared {
    pub dialer: Dialer,
    pub activity: Arc<Activity>,
    pub view: watch::Receiver<ScaleView>,
    pub readiness: watch::Receiver<Readiness>,
    pub metrics: Arc<ProxyMetrics>,
    pub max_wait: Duration,
    pub max_held: usize,
    /// HSD mode with `--when-all-busy=hold`: held connections take free pods in the order they
    /// arrived, and only the oldest watches for one, so that a pod set free wakes one held
    /// connection, not all of them.
    pub turnstile: Option<tokio::sync::Mutex<()>>,
}

impl Shared {
    /// The readiness to dial with, if a new connection may go to the app now.
    fn open_now(&self, view: &ScaleView, readiness: &Readiness, now: Instant) -> Option<Readiness> {
        (view.awake(now) && self.dialer.route.ready(readiness)).then(|| readiness.clone())
    }
}

/// Accepts until `stop`. An accept error (out of file descriptors, a connection reset before it
/// was accepted) is logged, counted and followed by a short pause; the listener stays open.
pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let mut pause = Duration::from_millis(5);
    let mut errors = ErrorLog::new("accepting a connection");
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut stopped => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                pause = Duration::from_millis(5);
                errors.recovered();
                tokio::spawn(handle(stream, shared.clone()));
            }
            Err(error) => {
                shared.metrics.accept_errors.inc();
                errors.failed(&error);
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

async fn handle(client: TcpStream, shared: Arc<Shared>) {
    let accepted = Instant::now();
    shared.metrics.connections.inc();
    let _open = shared.activity.open();
    let _ = client.set_nodelay(true);
    // Behind a queue of held connections, a new one queues too.
    let queued = shared.turnstile.is_some() && shared.activity.held_count() > 0;
    let warm = if queued {
        None
    } else {
        let view = shared.view.borrow();
        let readiness = shared.readiness.borrow();
        shared.open_now(&view, &readiness, accepted)
    };
    let upstream = match warm {
        Some(readiness) => match shared.dialer.dial(&readiness).await {
            Ok(upstream) => Some(upstream),
            Err(DialFailure::NotAllowed) => {
                shared.metrics.refused_not_allowed();
                None
            }
            // Ready, yet refusing (a pod still starting, or just replaced): hold and retry.
            Err(_) => Box::pin(hold(&client, &shared, accepted)).await,
        },
        // Boxed: the hold's state is allocated only for connections that wait.
        None => Box::pin(hold(&client, &shared, accepted)).await,
    };
    let Some(Upstream {
        stream: mut upstream,
        claim: _claim,
    }) = upstream
    else {
        return;
    };
    let _ = upstream.set_nodelay(true);
    shared.metrics.active.inc();
    let mut client = Counted::new(client);
    let result = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    shared.metrics.active.dec();
    shared.metrics.bytes_to_upstream.inc_by(client.read);
    shared.metrics.bytes_to_client.inc_by(client.written);
    if let Err(error) = result {
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// Waits for a watch channel to change; forever once its sender is gone.
async fn changed<T>(receiver: &mut watch::Receiver<T>) {
    if receiver.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Holds a connection until the app takes it. Returns the upstream connection, or `None` when
/// the connection was refused (`--max-held`), timed out (`--max-wait`), or the client left.
async fn hold(client: &TcpStream, shared: &Shared, accepted: Instant) -> Option<Upstream> {
    let Some(_held) = shared.activity.try_hold(shared.max_held) else {
        shared.metrics.refused_max_held();
        tracing::debug!("refused a connection: --max-held connections are held already");
        return None;
    };
    let deadline = tokio::time::Instant::from_std(accepted + shared.max_wait);
    let mut view = shared.view.clone();
    let mut readiness = shared.readiness.clone();
    let gone = client_gone(client);
    tokio::pin!(gone);
    let mut pause = Duration::from_millis(25);
    let outcome = 'hold: {
        // Kept until this connection has its upstream: the next in line waits until then.
        let _turn = match &shared.turnstile {
            Some(turnstile) => tokio::select! {
                turn = turnstile.lock() => Some(turn),
                _ = tokio::time::sleep_until(deadline) => break 'hold Err(HoldOutcome::MaxWait),
                _ = &mut gone => break 'hold Err(HoldOutcome::ClientClosed),
            },
            None => None,
        };
        loop {
            let candidate = {
                let view = view.borrow_and_update();
                let readiness = readiness.borrow_and_update();
                shared.open_now(&view, &readiness, Instant::now())
            };
            let Some(ready) = candidate else {
                // Ask the scaler to wake the app or move the deadline, then wait for news.
                shared.activity.demand.notify_one();
                tokio::select! {
                    _ = changed(&mut view) => {}
                    _ = changed(&mut readiness) => {}
                    _ = tokio::time::sleep_until(deadline) => break Err(HoldOutcome::MaxWait),
                    _ = &mut gone => break Err(HoldOutcome::ClientClosed),
                }
                continue;
            };
            tokio::select! {
                dialled = shared.dialer.dial(&ready) => match dialled {
                    Ok(upstream) => break Ok(upstream),
                    Err(DialFailure::NotAllowed) => break Err(HoldOutcome::NotAllowed),
                    Err(_) => {}
                },
                _ = tokio::time::sleep_until(deadline) => break Err(HoldOutcome::MaxWait),
                _ = &mut gone => break Err(HoldOutcome::ClientClosed),
            }
            // Ready, yet it did not answer: try again shortly.
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = tokio::time::sleep_until(deadline) => break Err(HoldOutcome::MaxWait),
                _ = &mut gone => break Err(HoldOutcome::ClientClosed),
            }
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    };
    let waited = accepted.elapsed();
    match outcome {
        Ok(upstream) => {
            shared.metrics.hold_ended(HoldOutcome::Forwarded, waited);
            if let Some(wake) = shared.activity.take_wake() {
                shared.metrics.wake_seconds.observe(wake.as_secs_f64());
                tracing::info!(
                    cold_start_seconds = wake.as_secs_f64(),
                    "the app answered after the wake"
                );
            }
            Some(upstream)
        }
        Err(outcome) => {
            shared.metrics.hold_ended(outcome, waited);
            if outcome == HoldOutcome::NotAllowed {
                shared.metrics.refused_not_allowed();
            }
            tracing::debug!(?outcome, ?waited, "closed a held connection");
            None
        }
    }
}

/// Resolves when the client has gone: it closed without sending anything, or reset. A client
/// that sends data while held keeps it queued in the socket (it is forwarded later), and one that
/// sent data and then closed its side may await an answer (a half-close): both stay held.
async fn client_gone(client: &TcpStream) {
    loop {
        let Ok(ready) = client.ready(Interest::READABLE).await else {
            return;
        };
        if ready.is_read_closed() || ready.is_error() {
            let mut byte = [0u8; 1];
            match client.peek(&mut byte).await {
                Ok(0) | Err(_) => return,
                Ok(_) => return std::future::pending().await,
            }
        }
        // Data arrived. Its readiness must stay set for the forward to read it, so a reset is
        // only noticed on a slow re-check.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A stream that counts the bytes read from and written to it.
struct Counted<S> {
    inner: S,
    read: u64,
    written: u64,
}

impl<S> Counted<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            read: 0,
            written: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read += (buf.filled().len() - before) as u64;
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = result {
            self.written += n as u64;
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
