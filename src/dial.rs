//! Outgoing gRPC connections, for nodes and benmoctl alike.
//!
//! One detail matters here: a node's port is often in the ephemeral range (the defaults
//! 50051..50055 are), and while the node is down, a connection attempt to 127.0.0.1:port can be
//! given that very port as its source and connect to itself (TCP simultaneous open). Left alone,
//! that socket, and then its TIME_WAIT, would keep the node from listening again for a minute.
//! So every outgoing socket sets SO_REUSEADDR (a TIME_WAIT socket with it does not block a
//! listener that sets it too), and a connection to itself is dropped at once.

use std::io;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Uri};

/// A lazily connected channel to `address` (`http://host:port`), whose calls time out after
/// `call_timeout` unless that is `None` (long-lived streams).
pub fn channel(
    address: &str,
    connect_timeout: Duration,
    call_timeout: Option<Duration>,
) -> Result<Channel, tonic::transport::Error> {
    channel_with_tls(address, connect_timeout, call_timeout, None)
}

/// Like [`channel`], over TLS when `tls` is given (the address must then be `https://`).
pub fn channel_with_tls(
    address: &str,
    connect_timeout: Duration,
    call_timeout: Option<Duration>,
    tls: Option<ClientTlsConfig>,
) -> Result<Channel, tonic::transport::Error> {
    let mut endpoint = Endpoint::from_shared(address.to_string())?
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true);
    if let Some(timeout) = call_timeout {
        endpoint = endpoint.timeout(timeout);
    }
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(endpoint.connect_with_connector_lazy(tower::service_fn(dial)))
}

async fn dial(uri: Uri) -> io::Result<TokioIo<TcpStream>> {
    let host = uri
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "address without a host"))?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let mut failure = io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"));
    for address in tokio::net::lookup_host((host, port)).await? {
        let socket = if address.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.connect(address).await {
            Ok(stream) if stream.local_addr()? == stream.peer_addr()? => {
                failure = io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("{address} is not listening (connected to itself)"),
                );
            }
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(TokioIo::new(stream));
            }
            Err(error) => failure = error,
        }
    }
    Err(failure)
}
