//! Test HTTP servers bound on pods' loopback IPs: the answers of HTTP busy probes.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    Status(u16),
    /// Accepts the connection and never answers.
    Silent,
}

/// Serves `behaviour` on `addr` until the returned task is aborted.
pub async fn serve(addr: SocketAddr, behaviour: Behaviour) -> tokio::task::JoinHandle<()> {
    let code = match behaviour {
        Behaviour::Status(code) => code,
        Behaviour::Silent => SILENT,
    };
    serve_switchable(
        addr,
        std::sync::Arc::new(std::sync::atomic::AtomicU16::new(code)),
    )
    .await
}

/// The status code that makes a test server accept and never answer.
pub const SILENT: u16 = 0;

/// A port unlikely to collide with other tests binding on the same loopback addresses.
pub fn test_port() -> u16 {
    20000 + (std::process::id() % 1000) as u16 * 10 + (rand_u16() % 10)
}

fn rand_u16() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        % 65521) as u16
}

/// Serves the status held in `status`, which the test may change at any time ([`SILENT`]: accept
/// and never answer).
pub async fn serve_switchable(
    addr: SocketAddr,
    status: std::sync::Arc<std::sync::atomic::AtomicU16>,
) -> tokio::task::JoinHandle<()> {
    assert!(
        addr.ip().is_loopback(),
        "test servers bind on loopback only: {addr}"
    );
    let listener = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let code = status.load(std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buffer = [0u8; 1024];
                let _ = socket.read(&mut buffer).await;
                if code == SILENT {
                    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                    return;
                }
                let response =
                    format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    })
}
