//! `sm-injector status` (also `kubectl sm-injector status` with a
//! `kubectl-sm_injector` link on PATH): lists metadata only, never Secret data.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use kube::Api;
use kube::api::ListParams;
use sm_injector::annotations::INJECTED_LABEL;
use sm_injector::backing::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use sm_injector::status::{Inputs, Layout, Warning, rows, table};

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Only this namespace (default: the kubeconfig context's namespace).
    #[arg(short, long, conflicts_with = "all_namespaces")]
    namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// The kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long)]
    kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[arg(long)]
    context: Option<String>,
    /// Print the table without its header line.
    #[arg(long)]
    no_headers: bool,
    /// `table`, `wide` (adds the pods' names) or `json`.
    #[arg(short, long, default_value = "table", value_parser = ["table", "wide", "json"])]
    output: String,
}

/// The client for `--kubeconfig` and `--context`, and the namespace the
/// context names (what kubectl would use).
async fn client(a: &StatusArgs) -> anyhow::Result<(kube::Client, String)> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let options = KubeConfigOptions {
        context: a.context.clone(),
        ..Default::default()
    };
    let config = match &a.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| {
                anyhow::anyhow!("cannot read the kubeconfig {}: {e}", path.display())
            })?;
            kube::Config::from_custom_kubeconfig(kc, &options).await?
        }
        None if a.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
        None => kube::Config::infer().await?,
    };
    let namespace = config.default_namespace.clone();
    let client = kube::Client::try_from(config)
        .map_err(|e| anyhow::anyhow!("cannot reach the cluster: {e}"))?;
    Ok((client, namespace))
}

/// An API error worded for the user: a refusal says it is one.
fn listing(what: &str, e: kube::Error) -> anyhow::Error {
    match e {
        kube::Error::Api(s) if s.code == 403 => anyhow::anyhow!(
            "not allowed to list {what}: {} (sm-injector status needs list on Secrets' metadata, Pods and Events in the namespaces shown)",
            s.message
        ),
        e => anyhow::anyhow!("cannot list {what}: {e}"),
    }
}

fn api<K>(client: &kube::Client, ns: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

pub async fn status(a: StatusArgs) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Event;
    let (client, context_ns) = client(&a).await?;
    let scope = if a.all_namespaces {
        None
    } else {
        Some(a.namespace.clone().unwrap_or(context_ns))
    };
    let managed = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
    // Metadata only: the API server sends no `data`.
    let backing = api::<Secret>(&client, &scope)
        .list_metadata(&managed)
        .await
        .map_err(|e| listing("the backing Secrets' metadata", e))?;
    let pods = api::<Pod>(&client, &scope)
        .list_metadata(&ListParams::default().labels(&format!("{INJECTED_LABEL}=true")))
        .await
        .map_err(|e| listing("the injected pods' metadata", e))?;
    let mut inputs = Inputs {
        backing: backing.items.into_iter().map(|o| o.metadata).collect(),
        pods: pods.items.into_iter().map(|o| o.metadata).collect(),
        ..Default::default()
    };
    // The workloads' annotations (restart-on-rotation), from their metadata.
    let mut wanted = std::collections::BTreeSet::new();
    for p in &inputs.pods {
        if let (Some(ns), Some(w)) = (&p.namespace, sm_injector::refresh::index::workload(p))
            && w.kind != "Pod"
        {
            wanted.insert((ns.clone(), w.kind, w.name));
        }
    }
    for (ns, kind, name) in wanted {
        let api = sm_injector::refresh::workloads::api(&client, &ns, kind);
        if let Ok(Some(o)) = api.get_metadata_opt(&name).await {
            inputs.workloads.insert(
                (ns, format!("{kind}/{name}")),
                o.metadata.annotations.unwrap_or_default(),
            );
        }
    }
    // sm-injector's latest Warning on each workload (refresh failures,
    // revoked access): only its Warnings, selected by the API server.
    let warnings = ListParams::default().fields("type=Warning,reportingComponent=sm-injector");
    let events = api::<Event>(&client, &scope)
        .list(&warnings)
        .await
        .map_err(|e| listing("Events (failures would go unseen)", e))?;
    inputs.failures = latest_warnings(events.items);
    let rows = rows(&inputs);
    let layout = Layout {
        all_namespaces: a.all_namespaces,
        wide: a.output == "wide",
        no_headers: a.no_headers,
    };
    match a.output.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&rows)?),
        _ if rows.is_empty() && !a.no_headers => match &scope {
            Some(ns) => eprintln!("No backing Secrets in namespace {ns}."),
            None => eprintln!("No backing Secrets in any namespace."),
        },
        _ => print!("{}", table(&rows, layout)),
    }
    Ok(())
}

/// The latest Warning on each workload, by (namespace, "Kind/name").
fn latest_warnings(events: Vec<Event>) -> BTreeMap<(String, String), Warning> {
    let mut latest: BTreeMap<(String, String), (Option<k8s_openapi::jiff::Timestamp>, Warning)> =
        BTreeMap::new();
    for e in events {
        let (Some(ns), Some(kind), Some(name)) = (
            e.metadata.namespace.clone(),
            e.involved_object.kind.as_deref(),
            e.involved_object.name.as_deref(),
        ) else {
            continue;
        };
        // As timestamps, not text: "…:00Z" sorts after "…:00.5Z" as text.
        let when = e
            .series
            .as_ref()
            .and_then(|s| s.last_observed_time.as_ref())
            .or(e.event_time.as_ref())
            .map(|t| t.0)
            .or_else(|| e.last_timestamp.as_ref().map(|t| t.0));
        let warning = Warning {
            reason: e.reason.unwrap_or_default(),
            note: e.message.unwrap_or_default(),
        };
        let key = (ns, format!("{kind}/{name}"));
        if latest.get(&key).is_none_or(|(w, _)| *w < when) {
            latest.insert(key, (when, warning));
        }
    }
    latest.into_iter().map(|(k, (_, v))| (k, v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, at: &str, note: &str) -> Event {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns"},
            "involvedObject": {"kind": "Deployment", "name": "app"},
            "reason": "RefreshFailed", "message": note, "type": "Warning",
            "eventTime": at
        }))
        .unwrap()
    }

    #[test]
    fn the_latest_warning_is_the_latest_in_time_not_in_text() {
        let latest = latest_warnings(vec![
            event("b", "2026-12-03T19:00:00.500000Z", "later"),
            event("a", "2026-12-03T19:00:00.000000Z", "earlier"),
        ]);
        let key = ("ns".to_string(), "Deployment/app".to_string());
        assert_eq!(latest[&key].note, "later");
    }
}
