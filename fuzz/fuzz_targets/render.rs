//! `sm-injector render`'s input: any YAML or JSON stream of manifests, and
//! its --secrets-file; rendered against an in-memory secrets source.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sm_injector::admission::Settings;
use sm_injector::cache::CachedSource;
use sm_injector::metrics::Metrics;
use sm_injector::render;
use sm_injector::source::StaticSource;

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    })
}

const SECRETS: &str = r#"{"n/db": {"pw": "x", "user": "y"}, "n/raw": "text"}"#;

fuzz_target!(|s: &str| {
    // The first line may be a secrets file of its own.
    let (secrets, manifests) = match s.split_once('\n') {
        Some((first, rest)) if first.starts_with('{') => (first, rest),
        _ => (SECRETS, s),
    };
    let Ok(values) = render::parse_secrets_file(secrets) else {
        return;
    };
    let Ok(docs) = render::parse_documents(manifests) else {
        return;
    };
    let source = CachedSource::new(
        Arc::new(StaticSource::new(values)),
        Duration::from_secs(60),
        Metrics::new(),
    );
    let settings = Settings {
        min_refresh: Duration::from_secs(60),
        aws_deadline: Duration::from_secs(1),
        max_aws_calls: 10,
        caps: Default::default(),
        identity: sm_injector::identity::Mode::Own,
    };
    if let Ok(out) = rt().block_on(render::render(docs, &source, &settings, false)) {
        render::format(&out.objects, false).expect("rendered objects print as YAML");
        render::format(&out.objects, true).expect("rendered objects print as JSON");
    }
});
