//! What the tests do on the test bed's cluster: namespaces made ready for
//! pods, waiting for a condition or an injected pod, `kubectl create`, and a
//! refresher leader's write.

use super::*;

/// A fresh namespace `<prefix>-<n>` with these labels, once its default
/// ServiceAccount exists (pods need it).
pub async fn namespace(client: &kube::Client, prefix: &str, labels: &[(&str, &str)]) -> String {
    namespace_with(client, prefix, labels, &[]).await
}

pub async fn namespace_with(
    client: &kube::Client,
    prefix: &str,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "{prefix}-{}-{}",
        std::process::id() % 10000,
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let map = |kv: &[(&str, &str)]| -> Option<BTreeMap<String, String>> {
        (!kv.is_empty()).then(|| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
    };
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: map(labels),
            annotations: map(annotations),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    let sas = Api::<ServiceAccount>::namespaced(client.clone(), &name);
    eventually(
        Duration::from_secs(30),
        "the default ServiceAccount",
        || async { sas.get_opt("default").await.ok().flatten() },
    )
    .await;
    name
}

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until a dry-run creation of `pod` in `ns` comes back with env
/// injected into its first container: the webhook just registered is called.
pub async fn until_injected(client: &kube::Client, ns: &str, pod: &Pod) {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    eventually(
        Duration::from_secs(30),
        "the webhook to take effect",
        || async {
            let p = api.create(&dry, pod).await.ok()?;
            p.spec?.containers.first()?.env.is_some().then_some(())
        },
    )
    .await
}

/// Writes `secret`'s version `version_id` (`text`, a JSON object) into its
/// AWSCURRENT keys-form backing Secret in `ns`, as the refresher's leader
/// does (the same write): for tests that play a leader which wrote a version
/// and died before anything else.
pub async fn leader_write(
    client: &kube::Client,
    ns: &str,
    secret: &str,
    arn: &str,
    version_id: &str,
    text: &str,
) -> sm_injector::store::Written {
    use sm_injector::backing::{self, Form};
    use sm_injector::reference::Version;
    let value = sm_injector::secret::SecretValue::new(
        arn.to_string(),
        secret.to_string(),
        version_id.to_string(),
        sm_injector::secret::Payload::String(text.to_string()),
    );
    let name = backing::name(secret, &Version::current(), Form::Keys);
    let obj = backing::object(ns, &name, &value, &Version::current(), Form::Keys, "now").unwrap();
    sm_injector::store::write_backing(
        &Api::namespaced(client.clone(), ns),
        &obj,
        sm_injector::store::rule::Writer::Leader,
        &|| true,
    )
    .await
    .unwrap()
}

/// `kubectl create -f -` with a pod: (success, stdout, stderr). kubectl prints
/// admission warnings on stderr as `Warning: ...`. Run without blocking the
/// runtime, which also serves the in-process webhook.
pub async fn kubectl_create(
    bed: &TestBed,
    ns: &str,
    p: &Pod,
    extra: &[&str],
) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::from(bed.kubectl())
        .args(["-n", ns, "create", "-f", "-"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(serde_json::to_string(p).unwrap().as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}
