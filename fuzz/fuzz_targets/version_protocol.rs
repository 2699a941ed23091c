//! The version service's protocol, both ends (issue 17): the service reading a check's body
//! (`kura::version_service::read_check`) and the agent reading an answer's body
//! (`kura_agent::version_client::read_answer`). Neither may panic; a check that is accepted
//! serializes back to one accepted the same; a refusal's message is bounded; an accepted answer
//! has one entry per asked reference, a refused one a bounded reason.
#![no_main]

use kura::version_service::read_check;
use kura_agent::version_client::read_answer;
use kura_agent::versions::VersionRef;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match read_check(data) {
        Ok(asked) => {
            let text = serde_json::to_vec(&asked).expect("a check serializes");
            assert_eq!(read_check(&text).expect("written back, still accepted"), asked);
        }
        Err(message) => assert!(message.len() < 16 * 1024, "{} bytes", message.len()),
    }
    let asked = [
        VersionRef {
            secret: "/demo/db".into(),
            version_stage: None,
            version_id: None,
        },
        VersionRef {
            secret: "ssm:/demo/flag".into(),
            version_stage: Some("blue".into()),
            version_id: None,
        },
    ];
    match read_answer(&asked, data) {
        Ok(answers) => {
            assert_eq!(answers.len(), asked.len());
            assert!(answers.iter().all(|a| a.current.is_some() || a.unknown));
        }
        // What the agent logs of a bad answer is bounded.
        Err(e) => assert!(e.to_string().len() < 4096, "{} bytes", e.to_string().len()),
    }
});
