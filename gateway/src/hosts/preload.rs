//! Preloading images from the gateway's engine into a new host's inner
//! engine: `docker save` on the outside streamed straight into `docker load`
//! on the inside, never held whole in memory.

use std::path::Path;
use std::time::{Duration, Instant};

use bollard::Docker;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper_util::rt::TokioIo;

use super::socket;

/// Why an image could not be preloaded.
#[derive(Debug, thiserror::Error)]
pub enum PreloadError {
    /// The image is not on the gateway's engine.
    #[error("image {0} is not on the gateway's engine (build or load it there first)")]
    Missing(String),
    /// The gateway's engine failed.
    #[error("gateway's engine: {0}")]
    Outer(#[source] bollard::errors::Error),
    /// The inner socket could not be reached.
    #[error(transparent)]
    Socket(#[from] socket::SocketError),
    /// Talking to the inner dockerd failed.
    #[error("inner dockerd: {0}")]
    Inner(String),
}

/// Loads every image of `images` that the inner engine behind `run_dir`
/// lacks. Returns how many were loaded.
pub async fn preload(
    outer: &Docker,
    run_dir: &Path,
    user: &str,
    images: &[String],
) -> Result<usize, PreloadError> {
    let mut loaded = 0;
    for image in images {
        if inner_has(run_dir, image).await? {
            tracing::debug!(%user, image, "already in the host; not preloading");
            continue;
        }
        let size = match outer.inspect_image(image).await {
            Ok(info) => info.size.unwrap_or(0).max(0) as u64,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return Err(PreloadError::Missing(image.clone())),
            Err(e) => return Err(PreloadError::Outer(e)),
        };
        load_one(outer, run_dir, user, image, size).await?;
        loaded += 1;
    }
    Ok(loaded)
}

/// True when the inner engine already has `image`.
async fn inner_has(run_dir: &Path, image: &str) -> Result<bool, PreloadError> {
    let request = hyper::Request::get(format!("/images/{image}/json"))
        .header(hyper::header::HOST, "docker")
        .body(Empty::<Bytes>::new())
        .map_err(|e| PreloadError::Inner(e.to_string()))?;
    let (status, _) = send(run_dir, request).await?;
    Ok(status == hyper::StatusCode::OK)
}

async fn load_one(
    outer: &Docker,
    run_dir: &Path,
    user: &str,
    image: &str,
    size: u64,
) -> Result<(), PreloadError> {
    let started = Instant::now();
    tracing::info!(%user, image, mb = size >> 20, "preloading image into the host");
    let mut sent: u64 = 0;
    let mut next_report = Instant::now() + Duration::from_secs(2);
    let user_owned = user.to_string();
    let image_owned = image.to_string();
    let body = outer.export_image(image).map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        sent += chunk.len() as u64;
        if Instant::now() >= next_report {
            next_report = Instant::now() + Duration::from_secs(2);
            tracing::info!(
                user = %user_owned,
                image = %image_owned,
                mb = sent >> 20,
                of_mb = size >> 20,
                "preloading"
            );
        }
        Ok::<_, std::io::Error>(Frame::data(chunk))
    });
    let request = hyper::Request::post("/images/load?quiet=1")
        .header(hyper::header::HOST, "docker")
        .header(hyper::header::CONTENT_TYPE, "application/x-tar")
        .body(StreamBody::new(body))
        .map_err(|e| PreloadError::Inner(e.to_string()))?;
    let (status, answer) = send(run_dir, request).await?;
    let answer = String::from_utf8_lossy(&answer);
    // `docker load` reports failures inside a 200 answer, as a JSON
    // progress line with an error.
    if !status.is_success() || answer.contains("\"error") {
        return Err(PreloadError::Inner(format!(
            "loading {image} failed ({status}): {}",
            answer.trim()
        )));
    }
    tracing::info!(
        %user,
        image,
        secs = started.elapsed().as_secs_f64(),
        "image preloaded"
    );
    Ok(())
}

/// Sends one request to the inner dockerd and reads the whole answer
/// (answers here are small: image JSON or load progress).
async fn send<B>(
    run_dir: &Path,
    request: hyper::Request<B>,
) -> Result<(hyper::StatusCode, Bytes), PreloadError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let inner = |e: &dyn std::fmt::Display| PreloadError::Inner(e.to_string());
    let stream = socket::connect(run_dir).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| inner(&e))?;
    let driver = tokio::spawn(conn);
    let response = sender.send_request(request).await.map_err(|e| inner(&e))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| inner(&e))?
        .to_bytes();
    driver.abort();
    Ok((status, body))
}
