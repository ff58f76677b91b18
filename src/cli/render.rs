//! `sm-injector render`: what the webhook would make of a manifest, offline.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sm_injector::admission::Settings;
use sm_injector::cache::CachedSource;
use sm_injector::metrics::Metrics;
use sm_injector::source::AwsSource;

#[derive(clap::Args)]
pub struct RenderArgs {
    /// The manifest (multi-document YAML or JSON); `-` reads standard input.
    #[arg(short = 'f', long = "filename", default_value = "-")]
    file: PathBuf,
    /// Secret values from this JSON file instead of AWS: one object mapping each
    /// secret name to its value (a JSON object for a JSON secret, a string for a plain one).
    #[arg(long)]
    secrets_file: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", default_value = "yaml", value_parser = ["yaml", "json"])]
    output: String,
    /// Print the backing Secrets' values instead of their sizes.
    #[arg(long)]
    show_values: bool,
    /// The shortest refresh-interval a pod may ask for (as the webhook's flag).
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    min_refresh_interval: Duration,
}

pub async fn render(a: RenderArgs) -> anyhow::Result<bool> {
    use sm_injector::render;
    use sm_injector::source::{SecretSource, StaticSource};
    let input = if a.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| anyhow::anyhow!("cannot read standard input: {e}"))?
    } else {
        std::fs::read_to_string(&a.file)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", a.file.display()))?
    };
    let docs = render::parse_documents(&input).map_err(anyhow::Error::msg)?;
    let metrics = Metrics::new();
    let source: Arc<dyn SecretSource> = match &a.secrets_file {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
            Arc::new(StaticSource::new(
                render::parse_secrets_file(&text).map_err(anyhow::Error::msg)?,
            ))
        }
        None => Arc::new(AwsSource::from_env(metrics.clone()).await),
    };
    let source = CachedSource::new(source, Duration::from_secs(300), metrics);
    let settings = Settings {
        min_refresh: a.min_refresh_interval,
        aws_deadline: Duration::from_secs(30),
        max_aws_calls: sm_injector::admission::MAX_AWS_CALLS,
        caps: Default::default(),
        identity: sm_injector::identity::Mode::Own,
    };
    match render::render(docs, &source, &settings, a.show_values).await {
        Ok(r) => {
            for w in &r.warnings {
                eprintln!("warning: {w}");
            }
            print!(
                "{}",
                render::format(&r.objects, a.output == "json").map_err(anyhow::Error::msg)?
            );
            Ok(true)
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            Ok(false)
        }
    }
}
