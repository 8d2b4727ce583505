//! `txmesh config print`: the merged configuration.

use std::process::ExitCode;

use clap::Subcommand;

use crate::config::TxmeshConfig;

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Print the merged configuration as JSON.
    Print,
}

pub(super) fn command(command: &ConfigCommand, config: &TxmeshConfig) -> anyhow::Result<ExitCode> {
    match command {
        ConfigCommand::Print => println!("{}", serde_json::to_string_pretty(config)?),
    }
    Ok(ExitCode::SUCCESS)
}
