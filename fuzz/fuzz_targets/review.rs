//! What the network sends to /mutate: AdmissionReview decoding, then the
//! review itself (annotations, access rule, fetch from an in-memory secrets
//! source, plan, patch) and the response's encoding. The server reads the pod
//! as `sm_injector::pod` keeps it; where k8s-openapi's full Pod also decodes,
//! what sm-injector reads of it gives the same patch; where the first look at
//! the body (`sm_injector::glance`) also reads it, it asks the same and
//! plans the same pod. The patch must apply to the pod it was built for, and
//! the patched pod must still be a pod.
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use libfuzzer_sys::fuzz_target;
use sm_injector::admission::{Asked, Planned, Settings, plan_pod};
use sm_injector::cache::CachedSource;
use sm_injector::metrics::Metrics;
use sm_injector::patch;
use sm_injector::policy::AccessRule;
use sm_injector::secret::Payload;
use sm_injector::source::StaticSource;

struct World {
    rt: tokio::runtime::Runtime,
    source: CachedSource,
    settings: Settings,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let values = HashMap::from([
            (
                "n/json".to_string(),
                Payload::String(
                    r#"{"user":"S3CRET-user","pw":"S3CRET-pw","url":"S3CRET-url"}"#.into(),
                ),
            ),
            (
                "n/raw".to_string(),
                Payload::String("S3CRET plain text".into()),
            ),
            ("n/bin".to_string(), Payload::Binary(vec![0, 159, 146, 150])),
            (
                "n/bad-keys".to_string(),
                Payload::String(r#"{"a b":"S3CRET-1","2x":"S3CRET-2"}"#.into()),
            ),
        ]);
        World {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap(),
            source: CachedSource::new(
                Arc::new(StaticSource::new(values)),
                Duration::from_secs(3600),
                Metrics::new(),
            ),
            settings: Settings {
                min_refresh: Duration::from_secs(60),
                aws_deadline: Duration::from_secs(1),
                max_aws_calls: 10,
                caps: Default::default(),
                identity: sm_injector::identity::Mode::Own,
            },
        }
    })
}

fuzz_target!(|data: &[u8]| {
    // As the server reads it: the slim pod.
    let Ok(req) = sm_injector::wire::decode(data, sm_injector::wire::DEFAULT_MAX_ENTRIES) else {
        return;
    };
    // As k8s-openapi reads it, when it does: the patch must be the same.
    let full: Option<AdmissionRequest<Pod>> = serde_json::from_slice::<AdmissionReview<Pod>>(data)
        .ok()
        .and_then(|r| r.try_into().ok());
    // The first look at the body (the warm path's) asks what kube's
    // decoding asks, wherever both read the body.
    // And a pod decided afresh from the glance is the pod kube's decoding
    // reads, as far as planning reads it.
    if let Some(g) = sm_injector::glance::read(data, sm_injector::wire::DEFAULT_MAX_ENTRIES) {
        assert_eq!(
            Asked::of_request(&req),
            Asked::of_glance(&g),
            "the glance asks otherwise"
        );
        // A replica's body recalled (`sm_injector::recall`) asks what its
        // own glance asks, and has its key: the volatile strings (uid,
        // managed-fields times, volume names) changed to other plain bytes,
        // the body is recalled, and read as its glance reads it.
        let max = sm_injector::wire::DEFAULT_MAX_ENTRIES;
        if let (Some(key), Some(asked)) = (sm_injector::decisions::key_of(&g), Asked::of_glance(&g))
        {
            let recall = sm_injector::recall::Recall::default();
            recall.remember(data, &asked, &key, max);
            if recall.size().0 == 1 {
                let v = sm_injector::glance::volatile(data, max).expect("remembered, so placed");
                let mut changed = data.to_vec();
                for (s, e) in std::iter::once(v.uid).chain(v.others.iter().copied()) {
                    for b in &mut changed[s..e] {
                        *b = b'a' + (*b % 26);
                    }
                }
                let r = recall.recall(&changed).expect("its replica is recalled");
                let g2 = sm_injector::glance::read(&changed, max).expect("a recalled body glances");
                assert_eq!(Some(r.asked()), Asked::of_glance(&g2), "recalled otherwise");
                assert_eq!(Some(r.key().to_vec()), sm_injector::decisions::key_of(&g2));
            }
        }
        let planned = g.created_pod().and_then(|p| p.planning_pod());
        if let (Some(planned), Some(pod)) = (planned, &req.object) {
            assert_eq!(
                planned,
                pod.clone().as_planning_reads(),
                "the glance plans another pod"
            );
        }
    }
    let Some(pod) = &req.object else {
        return;
    };
    let w = world();
    let ns = req.namespace.clone().unwrap_or_else(|| "n".into());
    let rule = std::sync::Arc::new(AccessRule::for_namespace(&ns, None));
    let planned = w.rt.block_on(plan_pod(
        pod,
        &ns,
        rule,
        &sm_injector::identity::Identity::Own,
        &w.source,
        &w.settings,
    ));
    let response = match planned {
        Planned::Nothing => AdmissionResponse::from(&req),
        Planned::Denied(reasons) => {
            let m = sm_injector::admission::denial_message(&reasons.0);
            assert!(m.len() < 64 * 1024, "denial message of {} bytes", m.len());
            AdmissionResponse::from(&req).deny(m)
        }
        Planned::Plan { plan, targets, .. } => {
            let (p, warnings) = patch::build(pod, &plan, &targets);
            if let Some(full) = full.as_ref().and_then(|f| f.object.as_ref()) {
                let wanted = pod
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("sm-injector.io/containers"))
                    .map(|v| {
                        v.split(',')
                            .map(|s| s.trim().to_string())
                            .collect::<Vec<_>>()
                    });
                let full = sm_injector::pod::Pod::from(full);
                if let Ok(tf) = patch::select(&full, wanted.as_deref())
                    && tf == targets
                {
                    let (pf, wf) = patch::build(&full, &plan, &tf);
                    assert_eq!(p, pf, "the slim pod's patch differs");
                    assert_eq!(warnings, wf);
                }
            }
            let mut doc = serde_json::to_value(pod).unwrap();
            let ops: json_patch::Patch =
                serde_json::from_slice(&p).expect("the patch is a JSON patch");
            json_patch::patch(&mut doc, &ops).expect("the patch applies to its pod");
            let patched: Pod = serde_json::from_value(doc).expect("the patched pod is a pod");
            let _ = patched;
            // Values reach the pod through Secret references, never inline.
            let text = String::from_utf8(p.clone()).expect("the patch is UTF-8");
            if !data.windows(6).any(|w| w == b"S3CRET") {
                assert!(
                    !text.contains("S3CRET"),
                    "a secret value in the patch: {text}"
                );
            }
            sm_injector::admission::mutated(&req, p)
        }
    };
    let wire = sm_injector::wire::encode(&response);
    serde_json::from_slice::<serde_json::Value>(&wire).expect("the answer is JSON");
});
