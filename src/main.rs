//! `prosperstack-relay`: parses the command line and hands over to [`prosperstack_relay::cli`].

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = prosperstack_relay::cli::Cli::parse();
    prosperstack_relay::cli::main(cli).await
}
