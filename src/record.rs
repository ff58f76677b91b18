//! The record sm-injector writes on each pod it mutates
//! ([`crate::annotations::INJECTED`]): which secrets the pod uses, how, and
//! how often they are to be refreshed. The refresher reads it back
//! ([`Record`]); admissions write it straight to JSON text ([`Plan::record`]),
//! since it goes into every patch.
//!
//! It is written compact, since every pod carries it (in etcd, and in each
//! watch event of the pod): an entry leaves out what its reader derives or
//! assumes, the backing Secret's name (derived from the rest, as the reader
//! checks it anyway), the version when it is the current one and the form
//! when it is `keys`. Records written in full (earlier builds) read the same.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backing::Form;
use crate::patch::plain;
use crate::plan::Plan;
use crate::reference::Version;

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub refresh_interval: String,
    /// The ServiceAccount whose role read the secrets (workload identity):
    /// the refresher reads with it too. Absent: sm-injector's own identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    pub secrets: Vec<RecordEntry>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RecordEntry {
    /// The backing Secret's name: written by earlier builds only (the reader
    /// derives it, and checks it when given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing: Option<String>,
    pub secret: String,
    /// [`Version`]'s text: `versionStage=<stage>` or `versionId=<id>`;
    /// absent: the current version.
    #[serde(default = "current", skip_serializing_if = "is_current")]
    pub version: String,
    /// `keys` or `raw` ([`crate::backing::Form`]); absent: `keys`.
    #[serde(default = "keys", skip_serializing_if = "is_keys")]
    pub form: String,
    /// The full ARN, when the pod's reference named the secret by ARN: the
    /// refresher fetches exactly that (its account and region).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
}

fn current() -> String {
    Version::current().to_string()
}

fn is_current(v: &str) -> bool {
    v.strip_prefix("versionStage=") == Some(crate::reference::CURRENT)
}

fn keys() -> String {
    Form::Keys.as_str().into()
}

fn is_keys(f: &str) -> bool {
    f == Form::Keys.as_str()
}

/// `humantime::format_duration`'s text for `d`: written directly for whole
/// seconds under a day (every usual refresh interval; formatting through
/// `Display` showed in profiles), through humantime otherwise.
fn interval(out: &mut Vec<u8>, d: Duration) {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 || secs == 0 || secs >= 86_400 {
        use std::io::Write;
        write!(out, "{}", humantime::format_duration(d)).expect("writing to a Vec");
        return;
    }
    let mut first = true;
    for (n, unit) in [
        (secs / 3600, b'h'),
        (secs / 60 % 60, b'm'),
        (secs % 60, b's'),
    ] {
        if n == 0 {
            continue;
        }
        if !first {
            out.push(b' ');
        }
        first = false;
        // Under 60 (hours: under 24): one or two digits.
        if n >= 10 {
            out.push(b'0' + (n / 10) as u8);
        }
        out.push(b'0' + (n % 10) as u8);
        out.push(unit);
    }
}

impl Plan {
    /// Whether no string of the record needs escaping (true of anything
    /// sm-injector accepts: secret names, version selectors, ARNs and backing
    /// names are all checked for their characters).
    fn record_is_plain(&self) -> bool {
        self.service_account.as_deref().is_none_or(plain)
            && self.backing.iter().all(|b| {
                plain(&b.name)
                    && plain(&b.secret_name)
                    && plain(b.version.selector())
                    && b.arn.as_deref().is_none_or(plain)
            })
    }

    /// Writes the record's JSON, every string of which is plain, with `q` for
    /// each of its quotes: `"` for the JSON, `\"` for the same JSON inside a
    /// JSON string.
    fn write_record(&self, out: &mut Vec<u8>, q: &[u8]) {
        let key = |out: &mut Vec<u8>, name: &str| {
            out.extend_from_slice(q);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(q);
            out.push(b':');
        };
        let field = |out: &mut Vec<u8>, first: bool, name: &str, parts: &[&str]| {
            if !first {
                out.push(b',');
            }
            key(out, name);
            out.extend_from_slice(q);
            parts
                .iter()
                .for_each(|p| out.extend_from_slice(p.as_bytes()));
            out.extend_from_slice(q);
        };
        out.push(b'{');
        key(out, "refreshInterval");
        // humantime writes digits, unit letters and spaces only.
        out.extend_from_slice(q);
        interval(out, self.refresh_interval);
        out.extend_from_slice(q);
        if let Some(sa) = &self.service_account {
            field(out, false, "serviceAccount", &[sa]);
        }
        out.push(b',');
        key(out, "secrets");
        out.push(b'[');
        for (i, b) in self.backing.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'{');
            field(out, true, "secret", &[&b.secret_name]);
            let kind = match &b.version {
                Version::Stage(_) => "versionStage=",
                Version::Id(_) => "versionId=",
            };
            if !b.version.is_current() {
                field(out, false, "version", &[kind, b.version.selector()]);
            }
            if b.form != Form::Keys {
                field(out, false, "form", &[b.form.as_str()]);
            }
            if let Some(arn) = &b.arn {
                field(out, false, "arn", &[arn]);
            }
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
    }

    /// The record's JSON, as `serde_json` writes [`Record`] (a unit test holds
    /// the two equal).
    pub fn record(&self) -> String {
        if !self.record_is_plain() {
            return serde_json::to_string(&self.to_record()).expect("a record serializes");
        }
        let mut out = Vec::with_capacity(64 + self.backing.len() * 200);
        self.write_record(&mut out, b"\"");
        String::from_utf8(out).expect("written from strings")
    }

    /// Writes the record's JSON as a JSON string (the annotation's value in
    /// the patch), escaped as it is written rather than in a second pass.
    pub fn record_string(&self, out: &mut Vec<u8>) {
        if !self.record_is_plain() {
            return serde_json::to_writer(out, &self.record()).expect("a string serializes");
        }
        out.push(b'"');
        self.write_record(out, b"\\\"");
        out.push(b'"');
    }

    fn to_record(&self) -> Record {
        Record {
            refresh_interval: humantime::format_duration(self.refresh_interval).to_string(),
            service_account: self.service_account.clone(),
            secrets: self
                .backing
                .iter()
                .map(|b| RecordEntry {
                    backing: None,
                    secret: b.secret_name.clone(),
                    version: b.version.to_string(),
                    form: b.form.as_str().into(),
                    arn: b.arn.clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backing::Form;
    use crate::fetch::{FetchError, FetchKey};
    use crate::plan::{Backing, Content};

    fn backing(
        name: &str,
        secret: &str,
        version: Version,
        form: Form,
        arn: Option<&str>,
    ) -> Backing {
        Backing {
            name: name.into(),
            secret_name: secret.into(),
            version: version.clone(),
            form,
            fetch: FetchKey {
                id: secret.into(),
                version,
            },
            arn: arn.map(Into::into),
            content: Content::Unreachable {
                reason: FetchError::Unreachable("test".into()).to_string(),
            },
        }
    }

    #[test]
    fn intervals_are_written_as_humantime_writes_them() {
        let text = |d: Duration| {
            let mut out = vec![];
            interval(&mut out, d);
            String::from_utf8(out).unwrap()
        };
        for secs in (0..100_000).chain([86_400 * 3 + 1, 31_557_600, u32::MAX as u64]) {
            let d = Duration::from_secs(secs);
            assert_eq!(
                text(d),
                humantime::format_duration(d).to_string(),
                "{secs} s"
            );
        }
        let d = Duration::from_millis(1500);
        assert_eq!(text(d), "1s 500ms");
    }

    /// The record as serde writes it.
    fn by_serde(p: &Plan) -> String {
        serde_json::to_string(&p.to_record()).unwrap()
    }

    /// The record as a JSON string, as serde writes it.
    fn string_by_serde(p: &Plan) -> Vec<u8> {
        serde_json::to_vec(&by_serde(p)).unwrap()
    }

    fn string_written(p: &Plan) -> Vec<u8> {
        let mut out = vec![];
        p.record_string(&mut out);
        out
    }

    #[test]
    fn the_written_record_is_what_serde_writes_and_reads_back() {
        let mut plan = Plan {
            backing: vec![],
            env: vec![],
            env_from: vec![],
            mounts: vec![],
            refresh_interval: Duration::from_secs(5400),
            service_account: None,
        };
        assert_eq!(plan.record(), by_serde(&plan));
        assert_eq!(string_written(&plan), string_by_serde(&plan));
        plan.backing = vec![
            backing(
                "sm-n-db-1a2b3c4d",
                "n/db",
                Version::current(),
                Form::Keys,
                None,
            ),
            backing(
                "sm-n-db-pinned-raw-5e6f7a8b",
                "n/db",
                Version::Id("0b5e2c1a-aaaa".into()),
                Form::Raw,
                Some("arn:aws:secretsmanager:eu-west-1:123456789012:secret:n/db-AbCdEf"),
            ),
        ];
        assert!(plan.record_is_plain());
        assert_eq!(plan.record(), by_serde(&plan));
        // Compact: no backing name, no current version, no `keys` form.
        assert_eq!(
            plan.record(),
            r#"{"refreshInterval":"1h 30m","secrets":[{"secret":"n/db"},{"secret":"n/db","version":"versionId=0b5e2c1a-aaaa","form":"raw","arn":"arn:aws:secretsmanager:eu-west-1:123456789012:secret:n/db-AbCdEf"}]}"#
        );
        assert_eq!(string_written(&plan), string_by_serde(&plan));
        assert!(!plan.record().contains("serviceAccount"));
        // Read with a workload's identity: its ServiceAccount is recorded.
        plan.service_account = Some("reader".into());
        assert_eq!(plan.record(), by_serde(&plan));
        assert_eq!(string_written(&plan), string_by_serde(&plan));
        assert!(plan.record().contains(r#""serviceAccount":"reader""#));
        // Nothing sm-injector accepts needs escaping; the writer escapes all the same.
        plan.backing.push(backing(
            "sm-x",
            "n/\"quoted\"\\\u{1}é",
            Version::Stage("AWS\"PENDING".into()),
            Form::Keys,
            None,
        ));
        assert!(!plan.record_is_plain());
        assert_eq!(string_written(&plan), string_by_serde(&plan));
        let text = plan.record();
        assert_eq!(text, by_serde(&plan));
        let back: Record = serde_json::from_str(&text).unwrap();
        assert_eq!(back.refresh_interval, "1h 30m");
        assert_eq!(back.secrets[1].version, "versionId=0b5e2c1a-aaaa");
        assert_eq!(back.secrets[1].form, "raw");
        assert_eq!(back.secrets[2].secret, "n/\"quoted\"\\\u{1}é");
        assert_eq!(back.secrets[2].version, "versionStage=AWS\"PENDING");
        assert!(!text.contains("\"arn\":null"));
    }
}
