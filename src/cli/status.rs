//! `sm-injector status` (also `kubectl sm-injector status` with a
//! `kubectl-sm_injector` link on PATH): lists metadata only, never Secret data.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::ListParams;
use sm_injector::annotations::INJECTED_LABEL;
use sm_injector::backing::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use sm_injector::status::{Inputs, rows, table};

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Only this namespace (default: every namespace).
    #[arg(short, long)]
    namespace: Option<String>,
    /// `table` or `json`.
    #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
    output: String,
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
    use k8s_openapi::api::events::v1::Event;
    let client = kube::Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the cluster: {e}"))?;
    let managed = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
    // Metadata only: the API server sends no `data`.
    let backing = api::<Secret>(&client, &a.namespace)
        .list_metadata(&managed)
        .await
        .map_err(|e| anyhow::anyhow!("cannot list the backing Secrets' metadata: {e}"))?;
    let pods = api::<Pod>(&client, &a.namespace)
        .list_metadata(&ListParams::default().labels(&format!("{INJECTED_LABEL}=true")))
        .await
        .map_err(|e| anyhow::anyhow!("cannot list the injected pods' metadata: {e}"))?;
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
    // sm-injector's latest Warning on each workload (refresh failures, revoked access).
    if let Ok(events) = api::<Event>(&client, &a.namespace)
        .list(&ListParams::default())
        .await
    {
        let mut latest: BTreeMap<(String, String), (String, String)> = BTreeMap::new();
        for e in events.items {
            if e.reporting_controller.as_deref() != Some("sm-injector")
                || e.type_.as_deref() != Some("Warning")
            {
                continue;
            }
            let (Some(ns), Some(r)) = (e.metadata.namespace.clone(), e.regarding.as_ref()) else {
                continue;
            };
            let key = (
                ns,
                format!(
                    "{}/{}",
                    r.kind.as_deref().unwrap_or(""),
                    r.name.as_deref().unwrap_or("")
                ),
            );
            let when = e
                .event_time
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default();
            let what = format!(
                "{}: {}",
                e.reason.as_deref().unwrap_or(""),
                e.note.as_deref().unwrap_or("")
            );
            if latest.get(&key).is_none_or(|(w, _)| *w < when) {
                latest.insert(key, (when, what));
            }
        }
        inputs.failures = latest.into_iter().map(|(k, (_, v))| (k, v)).collect();
    }
    let rows = rows(&inputs);
    match a.output.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&rows)?),
        _ => print!("{}", table(&rows)),
    }
    Ok(())
}
