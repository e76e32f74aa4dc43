//! A loopback TCP proxy the test can cut: peer traffic between coordinator
//! replicas runs through one per direction, so a test can partition a
//! replica from its peers while agents and operators still reach it.
//!
//! Owns the listener, its forwarding tasks, and the switch: [`TcpProxy::cut`]
//! drops every open connection and refuses new ones (accepted, then closed
//! at once: a partition as the sender sees it), [`TcpProxy::heal`] forwards
//! again. Dropping the proxy stops it.

use std::net::SocketAddr;

use anyhow::Result;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
pub struct TcpProxy {
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    stop: CancellationToken,
}

impl TcpProxy {
    /// Listens on 127.0.0.1 and forwards each connection to `target`.
    pub async fn start(target: SocketAddr) -> Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, cut_rx) = watch::channel(false);
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, target, cut_rx, stop.clone()));
        Ok(TcpProxy { addr, cut, stop })
    }

    /// Stops forwarding: open connections drop, new ones are closed.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Forwards again.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept(
    listener: TcpListener,
    target: SocketAddr,
    cut: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    loop {
        let conn = tokio::select! {
            () = stop.cancelled() => return,
            c = listener.accept() => c,
        };
        let Ok((inbound, _)) = conn else { continue };
        if *cut.borrow() {
            drop(inbound);
            continue;
        }
        let (cut, stop) = (cut.clone(), stop.clone());
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            forward(inbound, outbound, cut, stop).await;
        });
    }
}

async fn forward(
    mut a: TcpStream,
    mut b: TcpStream,
    mut cut: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    tokio::select! {
        () = stop.cancelled() => {}
        _ = cut.wait_for(|c| *c) => {}
        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
    }
}
