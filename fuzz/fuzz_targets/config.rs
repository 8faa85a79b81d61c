//! `Config::from_toml` + `Config::validate` over arbitrary text (seeded with the shipped
//! `proxy.toml` and `deploy/kubernetes/proxy.toml`).
//!
//! Checked: no panic, no hang, no runaway memory; every error names where it came from and
//! says what is wrong (non-empty origin and message). Neither step touches the file system.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use stream_token_proxy::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text, "fuzz.toml", Path::new("/nonexistent")) {
        Ok(config) => {
            if let Err(e) = config.validate() {
                assert!(!e.origin.is_empty() && !e.message.is_empty());
            }
        }
        Err(e) => {
            assert_eq!(e.origin, "fuzz.toml");
            assert!(!e.message.is_empty());
        }
    }
});
