//! `txmesh ingress` and `txmesh dashboard`: one service, until SIGTERM or
//! Ctrl-C, then a graceful stop within `shutdown_grace_secs`.

use std::{process::ExitCode, time::Duration};

use crate::{config::TxmeshConfig, dashboard, ingress, runtime, shutdown};

pub(super) fn ingress(config: TxmeshConfig) -> anyhow::Result<ExitCode> {
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let drained = runtime::block_on(config.io_threads, async move {
        let handle = ingress::start(&config).await?;
        shutdown::termination().await;
        tracing::info!("shutting down: draining streams and the publisher");
        anyhow::Ok(handle.stop(grace).await)
    })??;
    if drained {
        tracing::info!("drained");
    } else {
        eprintln!("txmesh: the publisher did not drain within {grace:?}");
    }
    Ok(super::exit(drained))
}

pub(super) fn dashboard(config: TxmeshConfig) -> anyhow::Result<ExitCode> {
    runtime::block_on(config.io_threads, async move {
        let handle = dashboard::start(&config).await?;
        shutdown::termination().await;
        handle.stop().await;
        anyhow::Ok(())
    })??;
    Ok(ExitCode::SUCCESS)
}
