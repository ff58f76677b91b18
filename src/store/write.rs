//! The one write of a backing Secret, for both writers: read what it holds,
//! ask the [`super::rule`], carry the answer out under a precondition.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};

use super::rule::{self, Action, Writer};
use crate::backing;
use crate::kube_error::kube_reason;

/// What [`write_backing`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// It did not exist: created.
    Created,
    /// It held this, exactly: nothing written.
    Current,
    /// The leader moved it from another version (`from`) to this one.
    Rotated { from: String },
    /// The leader restored what this version holds (it had been changed).
    Repaired,
    /// An admission found another version, or other content, and left it.
    Differs {
        version_id: String,
        keys: BTreeSet<String>,
    },
    /// The leader lost the Lease before writing: nothing written.
    NotLeading,
}

/// Why a backing Secret could not be read, written or deleted: the API
/// server's status code when it answered, and a short reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct WriteError {
    pub status: Option<u16>,
    pub reason: String,
}

impl WriteError {
    fn api(e: &kube::Error, what: &str) -> Self {
        WriteError {
            status: crate::kube_error::status(e),
            reason: format!("{what}{}", kube_reason(e)),
        }
    }

    fn other_source() -> Self {
        WriteError {
            status: None,
            reason: "a Secret of that name is sm-injector's backing Secret of another secret, \
                     version or form (their names hashed alike); it is not replaced"
                .into(),
        }
    }

    pub(crate) fn unmanaged() -> Self {
        WriteError {
            status: None,
            reason: "a Secret of that name exists and is not managed by sm-injector".into(),
        }
    }
}

/// Reads a backing Secret with an empty merge patch, which changes nothing
/// and needs only the `patch` verb (sm-injector has no read verb on Secrets).
/// `None` when it does not exist.
pub async fn read(api: &Api<Secret>, name: &str) -> Result<Option<Secret>, kube::Error> {
    match api
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({})),
        )
        .await
    {
        Ok(s) => Ok(Some(s)),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

/// The one write of a backing Secret (`obj`, from [`backing::object`]) by
/// `writer`: read what it holds, decide with [`rule::decide`], then create it
/// (which fails if it appeared meanwhile) or replace it under the
/// `resourceVersion` that was read (which fails if it changed meanwhile);
/// either failure starts over. Server-side apply cannot guard a creation (the
/// API server ignores `resourceVersion` when an apply creates), which is why
/// this is create-or-replace. A replace sets exactly the new data, so keys
/// removed from the secret go, and keeps labels and annotations that others
/// set. A Secret that is not sm-injector's is never touched. `leading` is
/// asked right before a leader's write. Returns the reason on failure.
pub async fn write_backing(
    api: &Api<Secret>,
    obj: &Secret,
    writer: Writer,
    leading: &(dyn Fn() -> bool + Sync),
) -> Result<Written, WriteError> {
    let name = obj.metadata.name.as_deref().unwrap_or_default();
    let pp = PostParams {
        field_manager: Some(backing::FIELD_MANAGER.into()),
        ..Default::default()
    };
    let mut attempts = 0;
    loop {
        attempts += 1;
        let existing = read(api, name)
            .await
            .map_err(|e| WriteError::api(&e, "cannot check what it holds: "))?;
        if let Some(s) = &existing
            && !rule::managed(s)
        {
            return Err(WriteError::unmanaged());
        }
        if let Some(s) = &existing
            && !rule::same_source(s, obj)
        {
            return Err(WriteError::other_source());
        }
        let action = rule::decide(writer, existing.as_ref(), obj);
        if matches!(action, Action::Create | Action::Replace { .. })
            && writer == Writer::Leader
            && !leading()
        {
            return Ok(Written::NotLeading);
        }
        let result = match (action, existing) {
            (Action::Nothing, _) => return Ok(Written::Current),
            (Action::Differs { version_id }, s) => {
                let keys = s
                    .and_then(|s| s.data)
                    .unwrap_or_default()
                    .into_keys()
                    .collect();
                return Ok(Written::Differs { version_id, keys });
            }
            (Action::Create, _) | (_, None) => api.create(&pp, obj).await.map(|_| Written::Created),
            (Action::Replace { rotation }, Some(mut s)) => {
                let from = rule::version_of(&s).unwrap_or_default().to_string();
                let ours = &obj.metadata;
                s.metadata
                    .labels
                    .get_or_insert_with(Default::default)
                    .extend(ours.labels.clone().unwrap_or_default());
                s.metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .extend(ours.annotations.clone().unwrap_or_default());
                s.metadata.managed_fields = None;
                s.data = obj.data.clone();
                s.string_data = None;
                s.type_ = obj.type_.clone();
                api.replace(name, &pp, &s).await.map(|_| {
                    if rotation {
                        Written::Rotated { from }
                    } else {
                        Written::Repaired
                    }
                })
            }
        };
        match result {
            Ok(w) => return Ok(w),
            // Created or written by another writer since the read: decide again.
            Err(kube::Error::Api(e)) if e.code == 409 && attempts < 5 => continue,
            Err(e) => return Err(WriteError::api(&e, "")),
        }
    }
}

/// An admission's [`write_backing`] of a Secret that is most likely absent
/// (the first write in a namespace): creates it straight away, one request
/// instead of a read and a create; when it exists after all (a concurrent
/// admission, an inventory deleted by hand, a Secret that is not
/// sm-injector's), decides as [`write_backing`] does.
pub async fn create_backing(api: &Api<Secret>, obj: &Secret) -> Result<Written, WriteError> {
    let pp = PostParams {
        field_manager: Some(backing::FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api.create(&pp, obj).await {
        Ok(_) => Ok(Written::Created),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            write_backing(api, obj, Writer::Admission, &|| true).await
        }
        Err(e) => Err(WriteError::api(&e, "")),
    }
}

/// Deletes a backing Secret that is still what was read: managed, and
/// unchanged since (its `resourceVersion` is the precondition), so that a
/// Secret written again meanwhile (a new pod's admission) stays. `Ok(false)`
/// when it was gone or changed.
pub async fn delete_backing(api: &Api<Secret>, name: &str) -> Result<bool, WriteError> {
    let Some(s) = read(api, name)
        .await
        .map_err(|e| WriteError::api(&e, "cannot check what it holds: "))?
    else {
        return Ok(false);
    };
    if !rule::managed(&s) {
        return Err(WriteError::unmanaged());
    }
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: s.metadata.resource_version.clone(),
            uid: s.metadata.uid.clone(),
        }),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(false),
        Err(e) => Err(WriteError::api(&e, "")),
    }
}
