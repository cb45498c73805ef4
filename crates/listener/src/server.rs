//! The set of bound listeners, the connection count, and the drain on shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::certs::CertStore;
use crate::tls::TlsConfigs;
use crate::{Handler, Limits, ListenerError, ListenerSettings, conn};

/// Listen backlog: connections the kernel queues before we accept them.
const BACKLOG: i32 = 4096;

/// Listeners and the connections they accepted, sharing one handler and one certificate store.
pub struct Server<H: Handler> {
    inner: Arc<Inner<H>>,
}

pub(crate) struct Inner<H: Handler> {
    pub handler: Arc<H>,
    pub store: Arc<CertStore>,
    pub tls: TlsConfigs,
    pub limits: ArcSwap<Limits>,
    pub active: AtomicUsize,
    /// `true` once shutdown began: connections finish what they are doing and close.
    pub closing: watch::Receiver<bool>,
    closing_tx: watch::Sender<bool>,
    pub tracker: TaskTracker,
    listeners: Mutex<HashMap<SocketAddr, Bound>>,
}

struct Bound {
    settings: ListenerSettings,
    local: SocketAddr,
    stop: watch::Sender<bool>,
}

/// What a drain achieved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections still open when the deadline passed (their requests were cut).
    pub abandoned: usize,
    pub took: Duration,
}

impl<H: Handler> Server<H> {
    pub fn new(
        handler: Arc<H>,
        store: Arc<CertStore>,
        limits: Limits,
    ) -> Result<Self, ListenerError> {
        let tls = TlsConfigs::new(store.clone())?;
        let (closing_tx, closing) = watch::channel(false);
        Ok(Server {
            inner: Arc::new(Inner {
                handler,
                store,
                tls,
                limits: ArcSwap::from_pointee(limits),
                active: AtomicUsize::new(0),
                closing,
                closing_tx,
                tracker: TaskTracker::new(),
                listeners: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Binds a socket and starts accepting on it. Returns the bound address (useful for port 0).
    /// Must be called inside a Tokio runtime.
    pub fn bind(&self, settings: &ListenerSettings) -> Result<SocketAddr, ListenerError> {
        let std_listener = bind_socket(settings.bind)?;
        let listener =
            TcpListener::from_std(std_listener).map_err(|source| ListenerError::Bind {
                addr: settings.bind,
                source,
                hint: "",
            })?;
        let local = listener.local_addr().unwrap_or(settings.bind);
        let (stop, stop_rx) = watch::channel(false);
        let name: Arc<str> = Arc::from(settings.bind.to_string());
        tokio::spawn(accept_loop(
            self.inner.clone(),
            listener,
            settings.tls,
            name,
            stop_rx,
        ));
        info!(bind = %settings.bind, local = %local, tls = settings.tls, "listening");
        self.listeners().insert(
            settings.bind,
            Bound {
                settings: settings.clone(),
                local,
                stop,
            },
        );
        Ok(local)
    }

    /// Stops accepting on `bind`; connections it accepted carry on.
    pub fn unbind(&self, bind: SocketAddr) -> bool {
        match self.listeners().remove(&bind) {
            Some(b) => {
                let _ = b.stop.send(true);
                info!(bind = %bind, "stopped listening");
                true
            }
            None => false,
        }
    }

    /// The listeners bound now: configured settings and the local address.
    pub fn bound(&self) -> Vec<(ListenerSettings, SocketAddr)> {
        self.listeners()
            .values()
            .map(|b| (b.settings.clone(), b.local))
            .collect()
    }

    /// New limits for connections accepted from now on.
    pub fn set_limits(&self, limits: Limits) {
        self.inner.limits.store(Arc::new(limits));
    }

    pub fn active_connections(&self) -> usize {
        self.inner.active.load(Ordering::Relaxed)
    }

    pub fn store(&self) -> &Arc<CertStore> {
        &self.inner.store
    }

    /// Stops every listener, lets in-flight requests finish (HTTP/1.1 closes after the current
    /// response, HTTP/2 sends GOAWAY), and waits up to `timeout` for the connections to close.
    pub async fn shutdown(&self, timeout: Duration) -> DrainReport {
        let started = Instant::now();
        let binds: Vec<SocketAddr> = self.listeners().keys().copied().collect();
        for b in binds {
            self.unbind(b);
        }
        let _ = self.inner.closing_tx.send(true);
        self.inner.tracker.close();
        let open = self.active_connections();
        info!(
            open_connections = open,
            timeout_s = timeout.as_secs_f64(),
            "draining"
        );
        let abandoned = match tokio::time::timeout(timeout, self.inner.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => {
                let left = self.active_connections();
                warn!(
                    abandoned = left,
                    "drain deadline passed; closing remaining connections"
                );
                left
            }
        };
        DrainReport {
            abandoned,
            took: started.elapsed(),
        }
    }

    fn listeners(&self) -> MutexGuard<'_, HashMap<SocketAddr, Bound>> {
        self.inner
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

async fn accept_loop<H: Handler>(
    inner: Arc<Inner<H>>,
    listener: TcpListener,
    tls: bool,
    name: Arc<str>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                let limit = inner.limits.load().max_connections;
                if inner.active.load(Ordering::Relaxed) >= limit {
                    metrics::counter!("myelin_connections_refused_total", "listener" => name.to_string(), "reason" => "max_connections").increment(1);
                    tracing::debug!(peer = %peer, limit, "connection refused: max_connections reached");
                    drop(stream);
                    continue;
                }
                let local = stream.local_addr().unwrap_or_else(|_| {
                    listener
                        .local_addr()
                        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
                });
                let guard = ActiveGuard::new(inner.clone(), name.clone());
                inner.tracker.spawn(conn::serve(
                    inner.clone(),
                    stream,
                    peer,
                    local,
                    tls,
                    name.clone(),
                    guard,
                ));
            }
            Err(e) => {
                // EMFILE/ENFILE and friends: wait a moment rather than spin.
                warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Counts a connection while it lives.
pub(crate) struct ActiveGuard<H: Handler> {
    inner: Arc<Inner<H>>,
    name: Arc<str>,
}

impl<H: Handler> ActiveGuard<H> {
    fn new(inner: Arc<Inner<H>>, name: Arc<str>) -> Self {
        inner.active.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("myelin_connections_active", "listener" => name.to_string()).increment(1.0);
        ActiveGuard { inner, name }
    }
}

impl<H: Handler> Drop for ActiveGuard<H> {
    fn drop(&mut self) {
        self.inner.active.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("myelin_connections_active", "listener" => self.name.to_string())
            .decrement(1.0);
    }
}

fn bind_socket(addr: SocketAddr) -> Result<std::net::TcpListener, ListenerError> {
    let err = |source: std::io::Error| {
        let hint = match source.kind() {
            std::io::ErrorKind::AddrInUse => {
                " (another program, or another [[listener]], already uses this address)"
            }
            std::io::ErrorKind::PermissionDenied => {
                " (ports below 1024 need root or CAP_NET_BIND_SERVICE; the systemd unit grants it)"
            }
            std::io::ErrorKind::AddrNotAvailable => " (this machine has no such address)",
            _ => "",
        };
        ListenerError::Bind { addr, source, hint }
    };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    if addr.is_ipv6() {
        // Predictable: "[::]:443" is IPv6 only; list "0.0.0.0:443" too for IPv4.
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(BACKLOG).map_err(err)?;
    Ok(socket.into())
}
