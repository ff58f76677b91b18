//! An admission's read again, in the background, of a backing Secret it
//! answered from an old finding ([`super::known`]): the same read and
//! [`rule`](super::rule) as an admission that knows nothing, but what it
//! finds goes into the memory for the next admissions instead of into an
//! answer.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::known::Key;
use super::{Syncer, Written, now_rfc3339, write_backing};
use crate::backing;
use crate::plan::{Backing, Content};
use crate::store::rule::Writer;

impl Syncer {
    /// Reads `b` (in `namespace`, whose scope is `scope`) again in the
    /// background. Found holding the fetched version (or missing, and so
    /// written again): known afresh. Found holding another version: forgotten,
    /// so the next admission reads it and answers with what it holds, and the
    /// refresher is told. Not read (an API error): forgotten, so the next
    /// admission reads it itself.
    pub(super) fn recheck(&self, namespace: &str, scope: &str, b: &Backing) {
        let Content::Fresh { value } = &b.content else {
            return;
        };
        let key: Key = (scope.to_string(), b.name.clone(), value.version_id.clone());
        let (this, namespace, b, value) = (
            self.clone(),
            namespace.to_string(),
            b.clone(),
            value.clone(),
        );
        tokio::spawn(async move {
            let at = now_rfc3339();
            let obj = match backing::object(&namespace, &b.name, &value, &b.version, b.form, &at) {
                Ok(o) => o,
                Err(e) => {
                    this.known.forget(&key).await;
                    tracing::warn!(namespace, secret = %b.name, error = %e, "could not build the backing Secret to read it again");
                    return;
                }
            };
            let api: Api<Secret> = Api::namespaced(this.client.clone(), &namespace);
            this.metrics.secret_read("recheck");
            match write_backing(&api, &obj, Writer::Admission, &|| true).await {
                Ok(Written::Differs { .. }) => {
                    this.known.forget(&key).await;
                    this.nudge(&namespace, &key.1, &key.2).await;
                }
                Ok(w) => {
                    if w == Written::Created {
                        this.metrics.secret_write("apply");
                    }
                    this.known.found(key).await;
                }
                Err(e) => {
                    this.known.forget(&key).await;
                    tracing::warn!(namespace, secret = %key.1, error = %e, "could not read a backing Secret again; the next admission using it reads it first");
                }
            }
        });
    }
}
