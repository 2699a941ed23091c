//! The local store file (`--store file:PATH`, YAML), opened and asked about a few ids.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use kura_agent::store::FileStore;
use libfuzzer_sys::fuzz_target;

fn path() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("kura-fuzz-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        dir.join("store.yaml")
    })
}

fuzz_target!(|data: &[u8]| {
    std::fs::write(path(), data).expect("the store file is written");
    if let Ok(store) = FileStore::open(path()) {
        for id in [
            "/prod/app/db",
            "/prod/app/db#password",
            "arn:aws:secretsmanager:us-east-1:111122223333:secret:/prod/app/db-AbCdEf",
        ] {
            let _ = store.describe(id);
        }
    }
});
