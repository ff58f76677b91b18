//! A pod's annotations (SPEC 2-3) and the record the refresher reads back
//! from pod metadata, which a tenant can also write. Input: `key=value` lines.
#![no_main]

use std::collections::BTreeMap;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sm_injector::annotations;
use sm_injector::refresh::index::{self, Limits};

fuzz_target!(|s: &str| {
    let map: BTreeMap<String, String> = s
        .split('\n')
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("\\n", "\n")))
        .collect();
    let _ = annotations::parse(&map, Duration::from_secs(60));
    let limits = Limits {
        max_entries: 100,
        min_interval: Duration::from_secs(60),
        max_calls: 10,
        max_records_per_namespace: 5000,
        max_secrets_per_namespace: 1000,
    };
    if let Some(Ok((entries, interval, _))) = index::read_record(&map, limits) {
        assert!(entries.len() <= 100);
        assert!(interval >= Duration::from_secs(60));
        let keys: Vec<_> = entries.iter().map(|e| e.fetch.clone()).collect();
        assert!(sm_injector::quota::calls_for(&keys) <= 10);
        // Every ARN entry names its own secret.
        for e in &entries {
            if e.fetch.id.starts_with("arn:") {
                assert!(sm_injector::backing::arn_names(&e.fetch.id, &e.secret));
            }
        }
    }
});
