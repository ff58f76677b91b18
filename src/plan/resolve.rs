//! Resolving a pod's references into a [`Plan`]: each reference checked
//! against the access rule and its fetched value, and given its backing
//! Secret (one per secret, version and form, however many keys the pod reads).

use std::collections::BTreeMap;

use super::{Backing, Caps, Content, EnvFrom, EnvVar, MAX_BACKING_PER_POD, Mount, Plan, denied};
use crate::annotations::{self, Injection};
use crate::backing::{self, Form, RAW_KEY};
use crate::decode;
use crate::fetch::CachedResults;
use crate::fetch::{FetchError, FetchKey};
use crate::policy::AccessRule;
use crate::reference::{SecretRef, Version};
use crate::secret::ContentError;

/// The backing Secrets resolved so far, sorted by name (the plan's order),
/// each name held once.
struct Backings(Vec<Backing>);

impl Backings {
    /// Where the backing Secret `name` is, or would be inserted.
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|b| b.name.as_str().cmp(name))
    }
}

struct Builder<'a> {
    rule: &'a AccessRule,
    results: &'a CachedResults,
    backing: Backings,
    errors: Vec<String>,
    /// References already resolved (id, version, form) and where their
    /// backing Secret is in `backing`: many references to the keys of one
    /// secret make one backing Secret, checked and named once, and found
    /// again without its name.
    resolved: Vec<(&'a str, &'a Version, Form, usize)>,
}

impl<'a> Builder<'a> {
    /// Resolves one reference into a backing Secret of `form`; returns where
    /// it is in `backing` (until the next one is inserted).
    fn backing_for(&mut self, r: &'a SecretRef, ann: &str, form: Form) -> Option<usize> {
        if let Some(&(.., at)) = self
            .resolved
            .iter()
            .find(|(id, v, f, _)| *f == form && *id == r.id && **v == r.version)
        {
            return Some(at);
        }
        let at = self.resolve_backing(r, ann, form)?;
        self.resolved.push((r.id, &r.version, form, at));
        Some(at)
    }

    /// Inserts `b` at `at` in `backing` (where [`Backings::find`] would put
    /// it); the places of those after it, as `resolved` holds them, move on.
    fn insert(&mut self, at: usize, b: Backing) -> usize {
        self.backing.0.insert(at, b);
        for (.., i) in &mut self.resolved {
            if *i >= at {
                *i += 1;
            }
        }
        at
    }

    fn resolve_backing(&mut self, r: &SecretRef, ann: &str, form: Form) -> Option<usize> {
        let key = FetchKey {
            id: r.id.to_string(),
            version: r.version.clone(),
        };
        let result = self
            .results
            .get(&key)
            .cloned()
            .unwrap_or_else(|| Err(FetchError::Unreachable("not fetched".into())));
        let fail = |this: &mut Self, msg: String| {
            this.errors.push(format!("{ann}: {msg}"));
            None
        };
        match result {
            Ok(value) => {
                if !self.rule.allows(&value.name) {
                    return fail(self, denied(r, Some(&value.name), self.rule));
                }
                let arn = r.is_arn().then(|| value.arn.clone());
                let name = backing::name_of(&value, r.is_arn(), &r.version, form);
                // Another reference already made it (and checked its content).
                let at = match self.backing.find(&name) {
                    Ok(at) => return Some(at),
                    Err(at) => at,
                };
                if form.is_keys()
                    && let Err(e) = value.json_fields()
                {
                    return fail(self, content_error(r, e));
                }
                if form == Form::RawBase64 && decode::base64(value.raw_bytes()).is_none() {
                    return fail(
                        self,
                        ContentError::NotBase64(value.name.clone()).to_string(),
                    );
                }
                let secret_name = value.name.clone();
                Some(self.insert(
                    at,
                    Backing {
                        name,
                        secret_name,
                        version: r.version.clone(),
                        form,
                        fetch: key,
                        arn,
                        content: Content::Fresh { value },
                    },
                ))
            }
            Err(e) if e.is_transient() && !r.is_arn() => {
                let name = backing::name(r.id, &r.version, form);
                match self.backing.find(&name) {
                    Ok(at) => Some(at),
                    Err(at) => Some(self.insert(
                        at,
                        Backing {
                            name,
                            secret_name: r.id.to_string(),
                            version: r.version.clone(),
                            form,
                            fetch: key,
                            arn: None,
                            content: Content::Unreachable {
                                reason: e.to_string(),
                            },
                        },
                    )),
                }
            }
            Err(e) if e.is_transient() => fail(
                self,
                format!(
                    "{e}, and the secret behind the ARN {:?} has not been fetched before",
                    r.id
                ),
            ),
            Err(e) => fail(self, format!("secret {:?} {e}", r.id)),
        }
    }

    /// The data key `key` must exist in the backing Secret at `at`.
    fn require_key(&mut self, at: usize, key: &str, r: &SecretRef, ann: &str) -> bool {
        let b = &self.backing.0[at];
        let form = b.form;
        match &b.content {
            Content::Fresh { value } => {
                let field = match (form.is_keys(), value.json_fields()) {
                    (false, _) => return key == RAW_KEY,
                    (true, Ok(fields)) => fields.get(key),
                    (true, Err(_)) => None,
                };
                let e = match field {
                    Some(v) if !form.decodes() || decode::base64(v.as_bytes()).is_some() => {
                        return true;
                    }
                    Some(_) => ContentError::KeyNotBase64 {
                        secret: value.name.clone(),
                        key: key.to_string(),
                    },
                    None => ContentError::MissingKey {
                        secret: value.name.clone(),
                        key: key.to_string(),
                    },
                };
                self.errors.push(format!("{ann}: {}", content_error(r, &e)));
                false
            }
            Content::Unreachable { .. } => true,
        }
    }
}

fn content_error(r: &SecretRef, e: &ContentError) -> String {
    let hint = match e {
        ContentError::NotJsonObject(_) | ContentError::Binary(_) if r.key.is_some() => {
            format!(", so {:?} cannot select a key", r.to_string())
        }
        ContentError::NotJsonObject(_) | ContentError::Binary(_) => {
            ", which env-from needs".to_string()
        }
        _ => String::new(),
    };
    format!("{e}{hint}")
}

/// Builds the plan, or every reason to deny.
pub fn resolve(
    inj: &Injection,
    rule: &AccessRule,
    results: &CachedResults,
    caps: &Caps,
) -> Result<Plan, Vec<String>> {
    let mut b = Builder {
        rule,
        results,
        backing: Backings(vec![]),
        errors: vec![],
        resolved: vec![],
    };
    let mut env = Vec::with_capacity(inj.env.len());
    for e in &inj.env {
        let form = Form::of(e.reference.key.is_some(), e.reference.decode);
        let Some(at) = b.backing_for(&e.reference, e.annotation, form) else {
            continue;
        };
        let key = e.reference.key.unwrap_or(RAW_KEY);
        if b.require_key(at, key, &e.reference, e.annotation) {
            env.push(EnvVar {
                var: e.var.to_string(),
                secret: b.backing.0[at].name.clone(),
                key: key.to_string(),
            });
        }
    }
    let mut env_from = vec![];
    for e in &inj.env_from {
        let form = Form::of(true, e.reference.decode);
        let Some(at) = b.backing_for(&e.reference, e.annotation, form) else {
            continue;
        };
        if let Content::Fresh { value } = &b.backing.0[at].content
            && let Ok(fields) = value.json_fields()
        {
            if fields.len() > caps.env_from_keys {
                b.errors.push(format!(
                    "{}: secret {:?} has {} keys; env-from injects at most {} (--max-env-from-keys)",
                    e.annotation,
                    value.name,
                    fields.len(),
                    caps.env_from_keys
                ));
                continue;
            }
            // Decoded, every key must be base64: env-from injects them all.
            if form.decodes() {
                let bad: Vec<&String> = fields
                    .iter()
                    .filter(|(_, v)| decode::base64(v.as_bytes()).is_none())
                    .map(|(k, _)| k)
                    .collect();
                if !bad.is_empty() {
                    b.errors.push(format!(
                        "{}: secret {:?} has keys whose values are not base64 ({}), so env-from with decode=base64 cannot inject them",
                        e.annotation,
                        value.name,
                        bad.iter().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", ")
                    ));
                    continue;
                }
            }
            let prefix = e.prefix.as_deref().unwrap_or("");
            let bad: Vec<&String> = fields
                .keys()
                .filter(|k| !annotations::valid_env_name_with(prefix, k))
                .collect();
            if !bad.is_empty() {
                b.errors.push(format!(
                    "{}: secret {:?} has keys that are not valid environment variable names ({}), so env-from cannot inject them; use sm-injector.io/env.<VAR> with #<key> for those",
                    e.annotation,
                    value.name,
                    bad.iter().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", ")
                ));
                continue;
            }
        }
        let entry = EnvFrom {
            prefix: e.prefix.clone(),
            secret: b.backing.0[at].name.clone(),
        };
        if !env_from.contains(&entry) {
            env_from.push(entry);
        }
    }
    if b.backing.0.len() > MAX_BACKING_PER_POD {
        b.errors.push(format!(
            "the pod's references need {} backing Secrets; at most {MAX_BACKING_PER_POD} per pod",
            b.backing.0.len()
        ));
    }
    if !b.errors.is_empty() {
        return Err(b.errors);
    }
    let mut mounts = vec![];
    if let Some(root) = &inj.mount_path {
        // One directory per secret and version selector; the key-per-file form
        // when the pod uses it, else the whole value as the file `value`; and
        // decoded where the pod asks for decode=base64 (certificate bundles
        // and keystores are files), the forms ranked in that order.
        let rank = |f: Form| (f.is_keys(), f.decodes());
        let mut chosen: BTreeMap<(String, Version), &Backing> = BTreeMap::new();
        for bk in &b.backing.0 {
            let slot = chosen
                .entry((bk.secret_name.clone(), bk.version.clone()))
                .or_insert(bk);
            if rank(bk.form) > rank(slot.form) {
                *slot = bk;
            }
        }
        let mut outside = vec![];
        for ((secret, version), bk) in chosen {
            let suffix = match &version {
                v if v.is_current() => String::new(),
                Version::Stage(s) | Version::Id(s) => format!("@{s}"),
            };
            let sub = format!("{secret}{suffix}");
            // Secret names may hold '.' and '/': a path must not leave the root.
            if sub
                .split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == "..")
            {
                outside.push(format!(
                    "{}: secret {secret:?} cannot be mounted under {root:?}: its name has an empty, '.' or '..' path segment, which would lead out of that directory",
                    annotations::MOUNT_PATH
                ));
                continue;
            }
            mounts.push(Mount {
                secret: bk.name.clone(),
                path: format!("{root}/{sub}"),
            });
        }
        if !outside.is_empty() {
            return Err(outside);
        }
    }
    Ok(Plan {
        backing: b.backing.0,
        env,
        env_from,
        mounts,
        refresh_interval: inj.refresh_interval,
        service_account: None,
    })
}
