//! sm-injector's binary: the allocator, the TLS crypto provider, and the
//! command line ([`cli`]).

#![forbid(unsafe_code)]

mod cli;

use clap::Parser;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    cli::run(cli::Cli::parse()).await
}
