//! A minimal HTTP endpoint for Prometheus: every GET gets the current
//! metrics text. A thread with a blocking listener is all a scrape every
//! few seconds needs.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Context as _, Result};

/// Serves `render()` at every path of `address` until `stop` is set.
/// Returns the bound address (useful with port 0).
pub fn serve_metrics(
    address: &str,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    stop: Arc<AtomicBool>,
) -> Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(address)
        .with_context(|| format!("listening for metrics on {address}"))?;
    let bound = listener
        .local_addr()
        .and_then(|bound| listener.set_nonblocking(true).map(|()| bound))
        .with_context(|| format!("listening for metrics on {address}"))?;
    std::thread::Builder::new()
        .name("sochi-metrics".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Err(error) = answer(stream, &*render) {
                            tracing::debug!(%error, "metrics request failed");
                        }
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(error) => {
                        tracing::warn!(%error, "metrics listener failed");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
        })
        .context("starting the metrics server")?;
    Ok(bound)
}

fn answer(stream: TcpStream, render: &dyn Fn() -> String) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    // Read the request head; its content does not matter.
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let body = render();
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}
