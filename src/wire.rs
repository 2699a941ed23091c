//! The hand-written wire codecs of the webhook's hot path, fenced here so that the rest of kura
//! reads as plain serde and kube.
//!
//! Each replaces a generic path that cost a measurable share of an admission under load (the
//! README's Performance section has the numbers):
//!
//! - [`review`]: the AdmissionReview decoded in one pass into only what kura reads, a pod
//!   straight into its judged part (`workload::WirePod`), instead of kube's
//!   `AdmissionReview<DynamicObject>` (a JSON tree of the object, then a conversion);
//!   guarded by `benches/admission.rs` ("decode") and `bench/admission-instructions.sh`;
//! - [`patch`]: the JSON Patch written straight to its text from borrowed structs, with RFC 6901
//!   escaping by hand, instead of `serde_json::Value` trees serialized afterwards; guarded by
//!   `benches/plan.rs` and `benches/admission.rs`;
//! - [`answer`]: the answer's JSON with the patch base64 (not kube's array of numbers) and the
//!   empty-patch swap that sets the patch type without re-serializing the patch; guarded by
//!   `benches/admission.rs` ("encode answer") and `bench/webhook-load.sh`;
//! - [`logs`]: the JSON log line in one pass and the stdout batcher; guarded by
//!   `bench/webhook-load.sh` (JSON logs on).
//!
//! Each module's tests hold its output to what the generic path produces or accepts. A change
//! here is measured with the benchmark that guards it, and kept only if it moves the numbers.

pub mod answer;
pub mod logs;
pub mod patch;
pub mod review;

pub use answer::encode_review;
pub use patch::PatchText;
