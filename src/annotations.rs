//! Reading the `sm-injector.io/` annotations of a pod (SPEC section 2).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::reference::{self, SecretRef};

pub const PREFIX: &str = "sm-injector.io/";
pub const ENV: &str = "sm-injector.io/env.";
pub const ENV_FROM: &str = "sm-injector.io/env-from";
pub const CONTAINERS: &str = "sm-injector.io/containers";
pub const MOUNT_PATH: &str = "sm-injector.io/mount-path";
pub const REFRESH_INTERVAL: &str = "sm-injector.io/refresh-interval";
/// On a Deployment, StatefulSet or DaemonSet's own metadata, never on a pod.
pub const RESTART_ON_ROTATION: &str = "sm-injector.io/restart-on-rotation";
/// The Namespace label that opts a namespace in (SPEC section 1).
pub const INJECT_LABEL: &str = "sm-injector.io/inject";
pub const INJECT_ENABLED: &str = "enabled";
/// The label sm-injector sets on the pods it mutates: the refresher's watch
/// selects them by it. Any pod can carry it; the record is checked all the same.
pub const INJECTED_LABEL: &str = "sm-injector.io/injected";
/// Written by sm-injector on the pods it mutates: what it injected (backing
/// Secrets, versions, refresh interval). Never read as input.
pub const INJECTED: &str = "sm-injector.io/injected";
/// Written by sm-injector on a workload's pod template when a rotation rolls it.
/// Never read as input.
pub const ROTATED_VERSIONS: &str = "sm-injector.io/rotated-versions";
/// Written by sm-injector on the pods it mutates: the version each backing
/// Secret held when the pod was admitted (what its containers read), as a
/// JSON object of backing Secret name to version id. The refresher rolls a
/// `restart-on-rotation` workload whose pods recorded another version than
/// the Secret holds. Never read as input.
pub const VERSIONS: &str = "sm-injector.io/versions";
/// The keys under `sm-injector.io/` that sm-injector writes itself.
pub const OUTPUT_KEYS: &[&str] = &[INJECTED, ROTATED_VERSIONS, VERSIONS];

/// The pod's input annotations: under [`PREFIX`], except what sm-injector
/// writes itself ([`OUTPUT_KEYS`]). None: the pod asks for nothing.
pub fn inputs(annotations: &BTreeMap<String, String>) -> impl Iterator<Item = (&String, &String)> {
    annotations
        .iter()
        .filter(|(k, _)| k.starts_with(PREFIX) && !OUTPUT_KEYS.contains(&k.as_str()))
}

/// Namespace annotation of SPEC section 4.
pub const ALLOWED_SECRETS: &str = "sm-injector.io/allowed-secrets";
/// Namespace annotation a cluster admin sets to force an immediate refresh:
/// `<secret name>@<any token>` (`*@<token>` for every secret of the namespace);
/// a new value forces a new refresh.
pub const REFRESH_NOW: &str = "sm-injector.io/refresh-now";

pub const DEFAULT_REFRESH: Duration = Duration::from_secs(3600);

/// `env.<VAR>`: one variable from one reference. The variable's name and the
/// annotation's are borrowed from the annotations parsed ([`parse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvRequest<'a> {
    pub var: &'a str,
    pub reference: SecretRef<'a>,
    pub annotation: &'a str,
}

/// `env-from` / `env-from.<PREFIX>`: every top-level key of a JSON secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFromRequest<'a> {
    /// The env var prefix including its trailing `_`.
    pub prefix: Option<String>,
    pub reference: SecretRef<'a>,
    pub annotation: &'a str,
}

/// Everything a pod asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injection<'a> {
    pub env: Vec<EnvRequest<'a>>,
    pub env_from: Vec<EnvFromRequest<'a>>,
    pub containers: Option<Vec<String>>,
    pub mount_path: Option<String>,
    pub refresh_interval: Duration,
}

/// One problem with one annotation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {problem}")]
pub struct AnnotationError {
    pub annotation: String,
    pub problem: String,
}

fn err(annotation: &str, problem: impl Into<String>) -> AnnotationError {
    AnnotationError {
        annotation: annotation.to_string(),
        problem: problem.into(),
    }
}

/// An environment variable name as shells and most runtimes accept it.
pub fn valid_env_name(s: &str) -> bool {
    matches!(s.chars().next(), Some(c) if c.is_ascii_alphabetic() || c == '_') && env_name_chars(s)
}

/// Whether `prefix` followed by `name` is a valid environment variable name
/// ([`valid_env_name`]), without joining them: env-from checks every key of
/// a secret under its prefix on each admission.
pub fn valid_env_name_with(prefix: &str, name: &str) -> bool {
    if prefix.is_empty() {
        valid_env_name(name)
    } else {
        valid_env_name(prefix) && env_name_chars(name)
    }
}

/// Letters, digits and '_' only.
fn env_name_chars(s: &str) -> bool {
    s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Reads the pod's annotations. `Ok(None)`: the pod asks for nothing (no input
/// key under `sm-injector.io/`). `Err`: every problem found, each naming its annotation.
pub fn parse(
    annotations: &BTreeMap<String, String>,
    min_refresh: Duration,
) -> Result<Option<Injection<'_>>, Vec<AnnotationError>> {
    // Sized once: a pod's env references are most of its annotations here.
    let envs = annotations.keys().filter(|k| k.starts_with(ENV)).count();
    let mut inj = Injection {
        env: Vec::with_capacity(envs),
        env_from: vec![],
        containers: None,
        mount_path: None,
        refresh_interval: DEFAULT_REFRESH,
    };
    let mut errors = vec![];
    let mut any = false;

    for (key, value) in annotations {
        let Some(name) = key.strip_prefix(PREFIX) else {
            continue;
        };
        if OUTPUT_KEYS.contains(&key.as_str()) {
            continue;
        }
        any = true;
        if let Some(var) = key.strip_prefix(ENV) {
            if !valid_env_name(var) {
                errors.push(err(key, format!("{var:?} is not a valid environment variable name (letters, digits and '_', not starting with a digit)")));
                continue;
            }
            match reference::parse(value) {
                Ok(r) => inj.env.push(EnvRequest {
                    var,
                    reference: r,
                    annotation: key,
                }),
                Err(e) => errors.push(err(key, format!("{value:?}: {e}"))),
            }
        } else if let Some(after) = key.strip_prefix(ENV_FROM)
            && (after.is_empty() || after.starts_with('.'))
        {
            let prefix = after.strip_prefix('.');
            if let Some(p) = prefix
                && !valid_env_name(p)
            {
                errors.push(err(key, format!("prefix {p:?} is not a valid environment variable name (letters, digits and '_', not starting with a digit)")));
                continue;
            }
            let refs = if prefix.is_some() {
                reference::parse(value).map(|r| vec![r])
            } else {
                reference::parse_list(value)
            };
            match refs {
                Ok(refs) => {
                    for r in refs {
                        if r.key.is_some() {
                            errors.push(err(key, format!("{r}: env-from takes every top-level key of the secret, so it cannot name one with '#'; use sm-injector.io/env.<VAR> for a single key")));
                            continue;
                        }
                        inj.env_from.push(EnvFromRequest {
                            prefix: prefix.map(|p| format!("{p}_")),
                            reference: r,
                            annotation: key,
                        });
                    }
                }
                Err(e) => errors.push(err(key, format!("{value:?}: {e}"))),
            }
        } else if key == CONTAINERS {
            let names: Vec<String> = value.split(',').map(|s| s.trim().to_string()).collect();
            if names.iter().any(|n| n.is_empty()) {
                errors.push(err(
                    key,
                    format!("{value:?}: expected container names separated by commas"),
                ));
            } else {
                inj.containers = Some(names);
            }
        } else if key == MOUNT_PATH {
            match check_mount_path(value) {
                Ok(()) => inj.mount_path = Some(value.trim_end_matches('/').to_string()),
                Err(p) => errors.push(err(key, format!("{value:?}: {p}"))),
            }
        } else if key == REFRESH_INTERVAL {
            match humantime::parse_duration(value.trim()) {
                Ok(d) if d < min_refresh => errors.push(err(
                    key,
                    format!(
                        "{value:?} is shorter than the minimum of {}",
                        humantime::format_duration(min_refresh)
                    ),
                )),
                Ok(d) => inj.refresh_interval = d,
                Err(e) => errors.push(err(
                    key,
                    format!("{value:?} is not a duration such as 10m or 1h ({e})"),
                )),
            }
        } else if key == RESTART_ON_ROTATION {
            errors.push(err(key, "this annotation belongs on the Deployment, StatefulSet or DaemonSet's own metadata, not on the pod template"));
        } else {
            errors.push(err(key, format!("unknown sm-injector annotation {name:?}; known: env.<VAR>, env-from, env-from.<PREFIX>, containers, mount-path, refresh-interval")));
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    if !any {
        return Ok(None);
    }
    if inj.env.is_empty() && inj.env_from.is_empty() {
        let what = [CONTAINERS, MOUNT_PATH, REFRESH_INTERVAL]
            .into_iter()
            .find(|k| annotations.contains_key(*k))
            .unwrap_or(PREFIX);
        return Err(vec![err(
            what,
            "no secret is referenced: add sm-injector.io/env.<VAR> or sm-injector.io/env-from",
        )]);
    }
    Ok(Some(inj))
}

fn check_mount_path(p: &str) -> Result<(), &'static str> {
    if !p.starts_with('/') {
        return Err("must be an absolute path");
    }
    if p.trim_end_matches('/').is_empty() {
        return Err("cannot be the root directory");
    }
    if p.split('/').any(|seg| seg == ".." || seg == ".") {
        return Err("must not contain '.' or '..' segments");
    }
    if p.contains(':') || p.chars().any(char::is_control) {
        return Err("must not contain ':' or control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn pod_without_our_annotations_asks_for_nothing() {
        assert_eq!(parse(&ann(&[("other.io/x", "y")]), MIN), Ok(None));
        // What sm-injector wrote itself is never input.
        assert_eq!(parse(&ann(&[(INJECTED, "{}")]), MIN), Ok(None));
    }

    #[test]
    fn seed_example_parses() {
        let a = ann(&[
            (
                "sm-injector.io/env.DISCORD_BOT_TOKEN",
                "arrakis/discord#bot_token",
            ),
            ("sm-injector.io/env.DATABASE_URL", "arrakis/postgres#url"),
            ("sm-injector.io/env-from.REDIS", "arrakis/redis"),
            ("sm-injector.io/env-from", "arrakis/a, arrakis/b"),
            ("sm-injector.io/containers", "app, sidecar"),
            ("sm-injector.io/mount-path", "/var/run/secrets/sm/"),
            ("sm-injector.io/refresh-interval", "10m"),
        ]);
        let inj = parse(&a, MIN).unwrap().unwrap();
        assert_eq!(inj.env.len(), 2);
        assert_eq!(inj.env[0].var, "DATABASE_URL");
        assert_eq!(inj.env[0].reference.key, Some("url"));
        assert_eq!(inj.env_from.len(), 3);
        let redis = inj
            .env_from
            .iter()
            .find(|e| e.reference.id == "arrakis/redis")
            .unwrap();
        assert_eq!(redis.prefix.as_deref(), Some("REDIS_"));
        assert_eq!(inj.containers, Some(vec!["app".into(), "sidecar".into()]));
        assert_eq!(inj.mount_path.as_deref(), Some("/var/run/secrets/sm"));
        assert_eq!(inj.refresh_interval, Duration::from_secs(600));
    }

    #[test]
    fn every_problem_is_reported_with_its_annotation() {
        let a = ann(&[
            ("sm-injector.io/env.1BAD", "a/b"),
            ("sm-injector.io/env.OK", "a/b?stage=x"),
            ("sm-injector.io/evn.TYPO", "a/b"),
            ("sm-injector.io/refresh-interval", "30s"),
            ("sm-injector.io/mount-path", "relative/path"),
            ("sm-injector.io/env-from", "a/b#key"),
        ]);
        let errs = parse(&a, MIN).unwrap_err();
        let msgs: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(errs.len(), 6, "{msgs:#?}");
        for (k, needle) in [
            ("env.1BAD", "not a valid environment variable name"),
            ("env.OK", "versionStage"),
            ("evn.TYPO", "unknown sm-injector annotation"),
            ("refresh-interval", "shorter than the minimum of 1m"),
            ("mount-path", "absolute path"),
            ("env-from", "cannot name one with '#'"),
        ] {
            assert!(
                msgs.iter().any(
                    |m| m.starts_with(&format!("annotation sm-injector.io/{k}:"))
                        && m.contains(needle)
                ),
                "no error for {k} with {needle:?} in {msgs:#?}"
            );
        }
    }

    #[test]
    fn bad_durations_and_misplaced_keys() {
        let e = parse(
            &ann(&[("sm-injector.io/env.A", "a/b"), (REFRESH_INTERVAL, "soon")]),
            MIN,
        )
        .unwrap_err();
        assert!(e[0].problem.contains("not a duration"), "{e:?}");
        let e = parse(
            &ann(&[
                ("sm-injector.io/env.A", "a/b"),
                (RESTART_ON_ROTATION, "true"),
            ]),
            MIN,
        )
        .unwrap_err();
        assert!(e[0].problem.contains("own metadata"), "{e:?}");
        let e = parse(&ann(&[(CONTAINERS, "app")]), MIN).unwrap_err();
        assert!(e[0].problem.contains("no secret is referenced"), "{e:?}");
        let e = parse(
            &ann(&[("sm-injector.io/env.A", "a/b"), (CONTAINERS, "app,,x")]),
            MIN,
        )
        .unwrap_err();
        assert!(e[0].problem.contains("container names"), "{e:?}");
    }

    #[test]
    fn env_names() {
        assert!(valid_env_name("DATABASE_URL"));
        assert!(valid_env_name("_x1"));
        assert!(!valid_env_name("1X"));
        assert!(!valid_env_name("A-B"));
        assert!(!valid_env_name(""));
    }

    #[test]
    fn a_prefixed_name_is_checked_as_the_joined_name() {
        let parts = [
            "", "_", "REDIS_", "A", "1X_", "A-B_", "x", "HOST", "1", "é", "a-b", "_9",
        ];
        for prefix in parts {
            for name in parts {
                assert_eq!(
                    valid_env_name_with(prefix, name),
                    valid_env_name(&format!("{prefix}{name}")),
                    "{prefix:?} + {name:?}"
                );
            }
        }
    }
}
