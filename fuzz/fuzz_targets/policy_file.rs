//! The policy file (YAML), as `kura serve --policy` and `kura lint --policy` read it.
#![no_main]

use kura::policy::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = Policy::from_yaml(&text, "fuzz");
});
