//! Records as the webhook writes them, and as earlier builds wrote them,
//! for tests.

use crate::backing::{self, Form};
use crate::record::Record;
use crate::reference::Version;

/// A record as the webhook writes it, for tests.
pub fn record_for(interval: &str, entries: &[(&str, Version, Form, Option<&str>)]) -> String {
    record_written(interval, entries, false)
}

/// A record as earlier builds wrote it (every field, the backing Secret's
/// name too), for tests.
pub fn record_in_full(interval: &str, entries: &[(&str, Version, Form, Option<&str>)]) -> String {
    let text = record_written(interval, entries, true);
    for field in ["\"version\"", "\"form\""] {
        assert!(text.contains(field), "written in full: {text}");
    }
    text
}

fn record_written(
    interval: &str,
    entries: &[(&str, Version, Form, Option<&str>)],
    in_full: bool,
) -> String {
    use crate::record::RecordEntry;
    let r = Record {
        refresh_interval: interval.into(),
        service_account: None,
        secrets: entries
            .iter()
            .map(|(secret, v, form, arn)| {
                let scope = arn.and_then(backing::arn_scope);
                RecordEntry {
                    backing: in_full
                        .then(|| backing::name_scoped(secret, scope.as_deref(), v, *form)),
                    secret: secret.to_string(),
                    version: v.to_string(),
                    form: form.as_str().into(),
                    arn: arn.map(str::to_string),
                }
            })
            .collect(),
    };
    let text = serde_json::to_string(&r).unwrap();
    if !in_full {
        return text;
    }
    // serde leaves out the defaults; earlier builds wrote them.
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (e, (_, version, form, _)) in v["secrets"].as_array_mut().unwrap().iter_mut().zip(entries) {
        e["version"] = version.to_string().into();
        e["form"] = form.as_str().into();
    }
    v.to_string()
}
