use super::*;

fn docs(yaml: &str) -> Vec<Value> {
    crate::render::parse_documents(yaml).unwrap()
}

const SEED: &str = include_str!("../../examples/eso/arrakis.yaml");

#[test]
fn the_seed_becomes_annotations_on_the_reading_container() {
    let c = convert(docs(SEED));
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    // The ExternalSecrets leave; the store and the Deployment stay.
    let kinds: Vec<&str> = c.docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["SecretStore", "Deployment"]);
    let t = &c.docs[1]["spec"]["template"];
    assert_eq!(
        t["metadata"]["annotations"],
        json!({
            "sm-injector.io/env.DISCORD_BOT_TOKEN": "arrakis/discord#bot_token",
            "sm-injector.io/env.DISCORD_APPLICATION_ID": "arrakis/discord#application_id",
            "sm-injector.io/env.DATABASE_URL": "arrakis/postgres#url",
            "sm-injector.io/env.SCYLLA_BUNDLE": "arrakis/scylladb?decode=base64#bundle",
            "sm-injector.io/env-from.REDIS": "arrakis/redis",
            // Only bot read them; the init container gets nothing it did not have.
            "sm-injector.io/containers": "bot"
        })
    );
    let bot = &t["spec"]["containers"][0];
    assert_eq!(bot["env"], json!([{"name": "LOG_LEVEL", "value": "info"}]));
    assert!(bot.get("envFrom").is_none(), "{bot}");
    assert!(
        c.notes
            .iter()
            .any(|n| n.contains("namespace arrakis must be labelled")),
        "{:?}",
        c.notes
    );
    // ESO read with the arrakis-bot ServiceAccount's role: the note says how
    // sm-injector reads with the pods' own role.
    assert!(
        c.notes.iter().any(
            |n| n.contains("reads with ServiceAccount arrakis-bot's role")
                && n.contains("sm-injector.io/aws-identity=serviceaccount")
        ),
        "{:?}",
        c.notes
    );
}

#[test]
fn secret_key_refs_and_unrelated_secrets() {
    let c = convert(docs(
        r#"
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: db, namespace: app}
spec:
  secretStoreRef: {name: aws}
  dataFrom: [{extract: {key: app/db}}]
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: app}
spec:
  containers:
  - name: a
    env:
    - name: PW
      valueFrom: {secretKeyRef: {name: db, key: password}}
    - name: OTHER
      valueFrom: {secretKeyRef: {name: not-eso, key: k}}
"#,
    ));
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    let pod = &c.docs[0];
    assert_eq!(
        pod["metadata"]["annotations"]["sm-injector.io/env.PW"],
        "app/db#password"
    );
    // A Secret no ExternalSecret makes is left alone.
    assert_eq!(pod["spec"]["containers"][0]["env"][0]["name"], "OTHER");
    assert!(
        pod["metadata"]["annotations"]
            .get("sm-injector.io/containers")
            .is_none()
    );
}

#[test]
fn what_cannot_be_expressed_is_refused_and_left_as_it_was() {
    let input = docs(
        r#"
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: s, namespace: app}
spec:
  secretStoreRef: {name: aws}
  data: [{secretKey: K, remoteRef: {key: app/s, property: k}}]
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: templated, namespace: app}
spec:
  secretStoreRef: {name: aws}
  target: {template: {data: {url: "x"}}}
  data: [{secretKey: K, remoteRef: {key: app/t}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: files, namespace: app}
spec:
  template:
    spec:
      containers: [{name: a, envFrom: [{secretRef: {name: s}}]}]
      volumes: [{name: v, secret: {secretName: s}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: split, namespace: app}
spec:
  template:
    spec:
      containers:
      - {name: a, envFrom: [{secretRef: {name: s}}]}
      - {name: b, env: [{name: X, valueFrom: {secretKeyRef: {name: s, key: K}}}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: tpl, namespace: app}
spec:
  template:
    spec:
      containers: [{name: a, envFrom: [{secretRef: {name: templated}}]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: missing, namespace: app}
spec:
  template:
    spec:
      containers: [{name: a, env: [{name: X, valueFrom: {secretKeyRef: {name: s, key: nope}}}]}]
"#,
    );
    let before = input.clone();
    let c = convert(input);
    let all = c.errors.join("\n");
    for said in [
        "ExternalSecret/app/templated: spec.target.template",
        "Deployment/app/files: it uses Secret s as volume \"v\"",
        "Deployment/app/split: containers a, b read different values",
        "Deployment/app/tpl: it reads Secret templated, whose ExternalSecret cannot be converted",
        "Deployment/app/missing: env X reads key \"nope\" of Secret s, which ExternalSecret/app/s does not make",
    ] {
        assert!(all.contains(said), "{said}\n{all}");
    }
    // Each refused workload is output as it was.
    for name in ["files", "split", "tpl", "missing"] {
        let find = |docs: &[Value]| {
            docs.iter()
                .find(|d| d["metadata"]["name"] == name && d["kind"] == "Deployment")
                .cloned()
                .unwrap()
        };
        assert_eq!(find(&c.docs), find(&before), "{name}");
    }
    // The templated ExternalSecret stays in the output, and so does the
    // converted one while a workload left as it was still reads its Secret.
    let external = |name: &str| {
        c.docs
            .iter()
            .any(|d| d["kind"] == "ExternalSecret" && d["metadata"]["name"] == name)
    };
    assert!(external("templated"));
    assert!(external("s"));
}
