//! Runs a command in a host through the engine's exec API and pumps its
//! stdio to an SSH channel: stdin from channel data (EOF closes it), stdout
//! as channel data, stderr as extended data, then exit-status, EOF, close.

use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bollard::query_parameters::ResizeExecOptions;
use futures_util::StreamExt;
use russh::ChannelMsg;
use russh::server::Msg;
use tokio::io::AsyncWriteExt;

/// Terminal size in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermSize {
    /// Columns.
    pub cols: u32,
    /// Rows.
    pub rows: u32,
}

/// What to run in the host.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// argv.
    pub cmd: Vec<String>,
    /// `NAME=value` pairs.
    pub env: Vec<String>,
    /// Run on a terminal of this size.
    pub tty: Option<TermSize>,
}

/// Why an exec could not be run.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The engine refused or failed the exec.
    #[error("cannot run the command in your host: {0}")]
    Engine(#[from] bollard::errors::Error),
}

/// Runs `spec` in `container`, pumping stdio over `channel` until the
/// command ends (or the client goes away), and reports its exit status.
pub async fn run(
    docker: &Docker,
    container: &str,
    spec: ExecSpec,
    channel: russh::Channel<Msg>,
) -> Result<(), ExecError> {
    let tty = spec.tty.is_some();
    let config = ExecConfig {
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(tty),
        env: Some(spec.env),
        cmd: Some(spec.cmd),
        console_size: spec
            .tty
            .map(|size| vec![size.rows as usize, size.cols as usize]),
        ..Default::default()
    };
    let exec_id = docker.create_exec(container, config).await?.id;
    let started = docker
        .start_exec(
            &exec_id,
            Some(StartExecOptions {
                detach: false,
                tty,
                output_capacity: Some(64 * 1024),
            }),
        )
        .await?;
    let StartExecResults::Attached {
        mut output,
        mut input,
    } = started
    else {
        return Ok(());
    };
    let (mut from_client, to_client) = channel.split();

    // Input and output pump independently: a command blocked writing
    // output must never wait on us writing its input, or the reverse.
    let resize_docker = docker.clone();
    let resize_id = exec_id.clone();
    let input_pump = tokio::spawn(async move {
        let mut stdin_open = true;
        while let Some(msg) = from_client.wait().await {
            match msg {
                ChannelMsg::Data { data } if stdin_open => {
                    stdin_open = input.write_all(&data).await.is_ok();
                }
                // A terminal has no half-close: like sshd, ignore EOF on a
                // PTY session (closing the exec's input would end it).
                ChannelMsg::Eof if stdin_open && !tty => {
                    let _ = input.shutdown().await;
                    stdin_open = false;
                }
                ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    ..
                } => {
                    let options = ResizeExecOptions {
                        h: row_height.min(i32::MAX as u32) as i32,
                        w: col_width.min(i32::MAX as u32) as i32,
                    };
                    if let Err(e) = resize_docker.resize_exec(&resize_id, options).await {
                        tracing::debug!("resize failed: {e}");
                    }
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
    });

    let mut stdout = to_client.make_writer();
    let mut stderr = to_client.make_writer_ext(Some(1));
    let mut client_gone = false;
    while let Some(item) = output.next().await {
        let written = match item {
            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                stdout.write_all(&message).await
            }
            Ok(LogOutput::StdErr { message }) => stderr.write_all(&message).await,
            Ok(LogOutput::StdIn { .. }) => Ok(()),
            Err(e) => {
                tracing::debug!("exec output ended: {e}");
                break;
            }
        };
        if written.is_err() {
            client_gone = true;
            break;
        }
    }
    let _ = stdout.flush().await;
    let _ = stderr.flush().await;
    input_pump.abort();
    if client_gone {
        return Ok(());
    }

    let status = exit_code(docker, &exec_id).await;
    let _ = to_client.eof().await;
    let _ = to_client.exit_status(status).await;
    let _ = to_client.close().await;
    Ok(())
}

/// The exec's exit code. The engine may report it a moment after the
/// output stream ends, so ask a few times.
async fn exit_code(docker: &Docker, exec_id: &str) -> u32 {
    for _ in 0..100 {
        match docker.inspect_exec(exec_id).await {
            Ok(info) if info.running != Some(true) => {
                return info.exit_code.map(|c| c as u32).unwrap_or(255);
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => {
                tracing::warn!("cannot read exit code of exec {exec_id}: {e}");
                return 255;
            }
        }
    }
    255
}
