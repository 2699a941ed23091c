//! The answer's JSON: kube's `AdmissionReview` serialization with two hand-made splices.
//!
//! - The patch goes out base64, as Go encodes `[]byte` and kube-apiserver's own clients send it.
//!   kube's `Serialize` writes it as an array of numbers: three times the bytes, and through
//!   serde a separate trip through the serializer for each byte.
//! - [`with_patch`] takes a patch that is already JSON text ([`PatchText`]): kube sets the patch
//!   type only through `with_patch`, which serializes a `json_patch::Patch`, so an empty one
//!   marks the type and the text replaces it.
//!
//! Guarded by `benches/admission.rs` ("encode answer"), `bench/webhook-load.sh` (whose baseline
//! server sends its answers through [`encode_review`] too) and the test below, which holds the
//! output to what kube serializes.

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionResponse, AdmissionReview, SerializePatchError};

use super::PatchText;

/// `response` carrying `patch` as a JSON Patch (sets `patchType`). Fails only if serde cannot
/// serialize an empty list.
pub fn with_patch(
    response: AdmissionResponse,
    patch: PatchText,
) -> Result<AdmissionResponse, SerializePatchError> {
    let mut r = response.with_patch(json_patch::Patch(Vec::new()))?;
    r.patch = Some(patch.into_json());
    Ok(r)
}

/// Room for an injection's answer (a pod with a few secrets: about 4 KiB).
const ANSWER_CAPACITY: usize = 8 * 1024;

/// An AdmissionReview answer as JSON, with the patch as a base64 string: Go's encoding of
/// `[]byte`, the form the API documents (see the module's documentation for why).
pub fn encode_review(mut review: AdmissionReview<DynamicObject>) -> serde_json::Result<Vec<u8>> {
    use base64::Engine as _;
    let mut out = Vec::with_capacity(ANSWER_CAPACITY);
    let Some(patch) = review.response.as_mut().and_then(|r| r.patch.take()) else {
        serde_json::to_writer(&mut out, &review)?;
        return Ok(out);
    };
    serde_json::to_writer(&mut out, &review)?;
    // The response is the review's last member, so the text ends with the two closing braces
    // of the response and the review; the patch goes in before them.
    if !out.ends_with(b"}}") {
        let response = review.response.as_mut().expect("it held the patch");
        response.patch = Some(patch);
        out.clear();
        serde_json::to_writer(&mut out, &review)?;
        return Ok(out);
    }
    out.truncate(out.len() - 2);
    out.extend_from_slice(br#","patch":""#);
    let start = out.len();
    out.resize(
        start + base64::encoded_len(patch.len(), true).unwrap_or(0),
        0,
    );
    let written = base64::engine::general_purpose::STANDARD
        .encode_slice(&patch, &mut out[start..])
        .map_err(serde::ser::Error::custom)?;
    out.truncate(start + written);
    out.extend_from_slice(b"\"}}");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::admission::AdmissionRequest;

    fn request() -> AdmissionRequest<DynamicObject> {
        let review: AdmissionReview<DynamicObject> =
            serde_json::from_str(include_str!("../../examples/admission-review.json"))
                .expect("the example parses");
        review.try_into().expect("the example has a request")
    }

    fn patch(bytes: usize) -> json_patch::Patch {
        serde_json::from_value(serde_json::json!([{
            "op": "add",
            "path": "/metadata/annotations/kura.dev~1status",
            "value": "x".repeat(bytes) + "\u{e9}\"\\\n\u{1}",
        }]))
        .expect("a patch")
    }

    #[test]
    fn encoded_answers_are_what_kube_serializes_with_the_patch_in_base64() {
        let req = request();
        let mut annotated = AdmissionResponse::from(&req)
            .with_patch(patch(3000))
            .expect("serializes");
        annotated.audit_annotations = [("decision".to_string(), "injected".to_string())].into();
        annotated.warnings = Some(vec!["w {}".into()]);
        let answers = [
            AdmissionResponse::from(&req)
                .with_patch(patch(0))
                .expect("serializes")
                .into_review(),
            annotated.into_review(),
            AdmissionResponse::from(&req).into_review(),
            AdmissionResponse::from(&req).deny("no").into_review(),
            AdmissionResponse::invalid("bad").into_review(),
            {
                let mut r = AdmissionResponse::from(&req);
                r.patch = Some(Vec::new());
                r.into_review()
            },
            {
                let mut r = AdmissionResponse::from(&req);
                r.patch = Some((0..=255).collect());
                r.into_review()
            },
            AdmissionReview {
                types: Default::default(),
                request: None,
                response: None,
            },
        ];
        use base64::Engine as _;
        for answer in answers {
            let mut expected = serde_json::to_value(&answer).expect("kube serializes it");
            // kube writes the patch as an array of numbers; kura as Go writes []byte.
            if let Some(p) = expected.pointer_mut("/response/patch") {
                let bytes: Vec<u8> = serde_json::from_value(p.take()).expect("bytes");
                *p = base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .into();
            }
            let ours = encode_review(answer).expect("encodes");
            let ours: serde_json::Value = serde_json::from_slice(&ours)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&ours)));
            assert_eq!(ours, expected);
        }
    }
}
