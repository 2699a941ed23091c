//! The AdmissionReview as kube-apiserver sends it, decoded in one pass into only the fields kura
//! reads. kube's `AdmissionReview<DynamicObject>` buffers the object as a JSON tree and decodes
//! the requesting user, options and original kind and resource that no decision reads; with the
//! object as [`crate::workload::WirePod`] (a pod straight into the part kura judges) or as raw
//! JSON until its kind is known, decoding is no longer the largest cost of an admission.
//! Guarded by `benches/admission.rs` ("decode") and `bench/admission-instructions.sh`; the
//! injection tests check that every review answers the same through this path and kube's.

use k8s_openapi::api::authentication::v1::UserInfo;
use kube::core::admission::{AdmissionRequest, Operation};
use kube::core::{DynamicObject, GroupVersionKind, GroupVersionResource, TypeMeta};
use serde::Deserialize;

/// The review as kube-apiserver sends it, its objects decoded as `O`: a [`Pod`] when the
/// request is for one, else raw JSON until the kind is known.
/// (serde reads a missing `Option` field as `None`.)
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", bound(deserialize = "O: Deserialize<'de>"))]
pub struct WireReview<O> {
    api_version: String,
    kind: String,
    request: Option<WireRequest<O>>,
}

impl<O> WireReview<O> {
    /// The request without its objects, and the objects; `None` without a request.
    pub fn into_parts(self) -> Option<(AdmissionRequest<DynamicObject>, Option<O>, Option<O>)> {
        let types = TypeMeta {
            api_version: self.api_version,
            kind: self.kind,
        };
        self.request.map(|r| r.into_parts(types))
    }
}

/// The `AdmissionRequest` fields kura reads, as kube-apiserver names them. `userInfo`,
/// `options` and the `request*` fields (the original kind and resource, before conversion)
/// are skipped over: nothing kura decides or answers depends on them, and kube-apiserver's
/// audit log records the requesting user along with kura's audit annotations.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", bound(deserialize = "O: Deserialize<'de>"))]
pub struct WireRequest<O> {
    uid: String,
    kind: GroupVersionKind,
    resource: GroupVersionResource,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    operation: Operation,
    object: Option<O>,
    old_object: Option<O>,
    #[serde(default)]
    dry_run: bool,
}

impl<O> WireRequest<O> {
    /// The request without its objects, and the objects.
    fn into_parts(
        self,
        types: TypeMeta,
    ) -> (AdmissionRequest<DynamicObject>, Option<O>, Option<O>) {
        let req = AdmissionRequest {
            types,
            uid: self.uid,
            kind: self.kind,
            resource: self.resource,
            sub_resource: self.sub_resource,
            request_kind: None,
            request_resource: None,
            request_sub_resource: None,
            name: self.name,
            namespace: self.namespace,
            operation: self.operation,
            user_info: UserInfo::default(),
            object: None,
            old_object: None,
            dry_run: self.dry_run,
            options: None,
        };
        (req, self.object, self.old_object)
    }
}
