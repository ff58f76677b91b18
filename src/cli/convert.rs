//! `sm-injector convert`: External Secrets Operator manifests to
//! sm-injector annotations, offline ([`sm_injector::convert`]).

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ConvertArgs {
    /// Manifests (multi-document YAML or JSON) holding the ExternalSecrets,
    /// their SecretStores and the workloads reading their Secrets; repeat
    /// for several files; `-` reads standard input.
    #[arg(short = 'f', long = "filename", default_value = "-")]
    files: Vec<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", default_value = "yaml", value_parser = ["yaml", "json"])]
    output: String,
}

/// Prints the converted documents; `Ok(false)` when something could not be
/// converted (said on standard error, that workload printed as it was).
pub fn convert(a: ConvertArgs) -> anyhow::Result<bool> {
    use sm_injector::render;
    let mut docs = vec![];
    for f in &a.files {
        let input = if f.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())
                .map_err(|e| anyhow::anyhow!("cannot read standard input: {e}"))?
        } else {
            std::fs::read_to_string(f)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))?
        };
        docs.extend(
            render::parse_documents(&input).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?,
        );
    }
    let c = sm_injector::convert::convert(docs);
    for n in &c.notes {
        eprintln!("note: {n}");
    }
    for e in &c.errors {
        eprintln!("error: {e}");
    }
    print!(
        "{}",
        render::format(&c.docs, a.output == "json").map_err(anyhow::Error::msg)?
    );
    Ok(c.errors.is_empty())
}
