//! What Secrets Manager answers: a value (string or binary) turned into a
//! backing Secret's data in both forms, and AWS error codes and messages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sm_injector::backing::{self, Form};
use sm_injector::fetch::FetchError;
use sm_injector::secret::{Payload, SecretValue, valid_secret_key};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let payload = if kind & 1 == 0 {
        match std::str::from_utf8(rest) {
            Ok(s) => Payload::String(s.to_string()),
            Err(_) => return,
        }
    } else {
        Payload::Binary(rest.to_vec())
    };
    // The same length of other content, to show Debug never depends on it.
    let other = match &payload {
        Payload::String(s) => Payload::String("x".repeat(s.len())),
        Payload::Binary(b) => Payload::Binary(vec![b'x'; b.len()]),
    };
    let value = |p| SecretValue::new("arn:x".into(), "n/s".into(), "v1".into(), p);
    let v = value(payload);
    if let Ok(fields) = v.json_fields() {
        for k in fields.keys() {
            assert!(valid_secret_key(k), "{k:?}");
        }
    }
    if let Ok(data) = backing::data(&v, Form::Keys) {
        assert!(data.keys().all(|k| valid_secret_key(k)));
    }
    backing::data(&v, Form::Raw).expect("any value has a raw form");
    assert_eq!(
        format!("{v:?}"),
        format!("{:?}", value(other)),
        "Debug shows the value"
    );
    let text = String::from_utf8_lossy(rest);
    let (code, msg) = text.split_once(' ').unwrap_or((&text, ""));
    let e = FetchError::from_code(Some(code), Some(msg));
    let _ = (e.to_string(), e.is_transient());
});
