//! The command line: `serve`, `certs`, `render`, `status` and `convert`, each in its own module.

mod certs;
mod convert;
mod render;
mod serve;
mod status;
mod tls;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "Injects AWS Secrets Manager secrets into Kubernetes pods as env vars"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the mutating admission webhook.
    Serve(Box<serve::ServeArgs>),
    /// Issue the webhook's serving certificate and write the TLS Secret and the
    /// MutatingWebhookConfiguration with its caBundle (see certs/README.md).
    Certs(certs::CertsArgs),
    /// Print what the webhook would make of the pod templates in a manifest
    /// (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob), plus
    /// the backing Secrets, values masked. Other documents pass through.
    Render(render::RenderArgs),
    /// Show the backing Secrets, their versions and last refresh, the pods and
    /// workloads using them, what restarts when they rotate, and failures
    /// (metadata only, never Secret data).
    Status(status::StatusArgs),
    /// Rewrite workloads that read Secrets made by External Secrets Operator
    /// (ExternalSecret v1beta1/v1 on AWS Secrets Manager) to read them with
    /// sm-injector.io/ annotations instead; what cannot be expressed is
    /// refused by name and left as it was (exit 1).
    Convert(convert::ConvertArgs),
}

/// Runs the command; `render` exits 1 when a pod would be denied.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(a) => {
            serve::init_tracing(a.log_json);
            serve::serve(*a).await
        }
        Command::Certs(a) => certs::certs(a),
        Command::Status(a) => status::status(a).await,
        Command::Convert(a) => {
            if !convert::convert(a)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Render(a) => {
            if !render::render(a).await? {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
