//! The daemon's client: one HTTP/1.1 request over its Unix socket. Used by the CLI's
//! client commands and by the demo, so neither depends on the other.

use crate::config::Config;
use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// How long a client command waits for the daemon's answer.
const CLIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The socket path a client uses: `--socket`, else the configuration's.
pub fn client_socket(explicit: Option<&Path>, config: Option<&Config>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| config.map(|c| c.socket.path.clone()))
        .unwrap_or_else(|| PathBuf::from("ninjapoll.sock"))
}

/// One HTTP/1.1 request over the daemon's Unix socket.
pub async fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value)> {
    let stream = match tokio::net::UnixStream::connect(socket).await {
        Ok(s) => s,
        // No file, or a file nobody listens on (left by a crash): no daemon.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            bail!(
                "no ninjapoll daemon is listening on {} ({e}); start it with `ninjapoll run`, or pass --socket",
                socket.display()
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
            "not allowed to connect to {} ({e}): the socket's owner, group and mode (socket.mode) must let this user in",
            socket.display()
        ),
        Err(e) => bail!("cannot connect to {}: {e}", socket.display()),
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .context("HTTP handshake with the daemon")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(bytes)))
        .context("building the request")?;
    // A daemon that accepted the connection but hangs must not hang a script too.
    let exchange = async {
        let resp = sender
            .send_request(req)
            .await
            .context("talking to the daemon")?;
        let status = resp.status().as_u16();
        let collected = resp
            .into_body()
            .collect()
            .await
            .context("reading the daemon's answer")?
            .to_bytes();
        anyhow::Ok((status, collected))
    };
    let (status, collected) = tokio::time::timeout(CLIENT_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the daemon on {} did not answer within {CLIENT_TIMEOUT:?}",
                socket.display()
            )
        })??;
    let value = serde_json::from_slice(&collected)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&collected).into_owned()));
    Ok((status, value))
}
