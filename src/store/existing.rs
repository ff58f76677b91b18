//! The fallback of SPEC section 6: when Secrets Manager cannot be reached, an
//! admission is answered from the backing Secret already in the namespace, if
//! it is sm-injector's, holds the secret the pod names, and has every key the
//! pod reads; otherwise it is denied, saying which of those failed.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};

use super::{Done, Syncer, missing_keys, rule};
use crate::backing;
use crate::kube_error::kube_reason;
use crate::plan::Backing;

impl Syncer {
    /// Secrets Manager could not be reached: the existing backing Secret
    /// serves if it holds the keys the pod reads.
    pub(super) async fn existing(
        &self,
        api: &Api<Secret>,
        namespace: &str,
        b: &Backing,
        required: &BTreeSet<&str>,
        reason: &str,
        dry_run: bool,
    ) -> Result<Done, String> {
        let pp = PatchParams {
            dry_run,
            ..Default::default()
        };
        self.metrics.secret_read("admission");
        let s = match api
            .patch(&b.name, &pp, &Patch::Merge(serde_json::json!({})))
            .await
        {
            Ok(s) => s,
            Err(kube::Error::Api(e)) if e.code == 404 => {
                return Err(format!(
                    "{reason}, and there is no backing Secret for {:?} in namespace {namespace:?} yet",
                    b.secret_name
                ));
            }
            Err(e) => {
                return Err(format!(
                    "{reason}, and the backing Secret {namespace}/{} could not be checked: {}",
                    b.name,
                    kube_reason(&e)
                ));
            }
        };
        if !rule::managed(&s) {
            return Err(format!(
                "{reason}, and the Secret {namespace}/{} is not managed by sm-injector",
                b.name
            ));
        }
        if !rule::holds_source(&s, &b.secret_name, &b.version.to_string(), b.form.as_str()) {
            return Err(format!(
                "{reason}, and the Secret {namespace}/{} is the backing Secret of another secret",
                b.name
            ));
        }
        let held = rule::version_of(&s).unwrap_or_default().to_string();
        let annotations = s.metadata.annotations.clone().unwrap_or_default();
        let keys: BTreeSet<String> = s.data.unwrap_or_default().into_keys().collect();
        let missing = missing_keys(required, &keys);
        if !missing.is_empty() {
            return Err(format!(
                "{reason}, and the existing backing Secret for {:?} has no key {missing}",
                b.secret_name,
            ));
        }
        let refreshed = annotations
            .get(backing::ANN_REFRESHED)
            .map_or("an unknown time", String::as_str);
        Ok(Done::Warning {
            warning: format!(
                "{reason}; using the existing backing Secret {} for {:?}, last refreshed at {refreshed}",
                b.name, b.secret_name
            ),
            held,
        })
    }
}
