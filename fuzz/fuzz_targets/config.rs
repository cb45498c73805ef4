//! The configuration loader never panics, whatever the file holds, and every error it reports
//! names a place: a key path or a line in the file.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("fuzz.toml");
    match myelin_config::parse(text, file) {
        Ok(config) => {
            // what parsed once parses again to the same limits (no hidden state)
            let again = myelin_config::parse(text, file).expect("parses twice");
            assert_eq!(again.limits, config.limits);
            assert_eq!(again.listeners.len(), config.listeners.len());
        }
        Err(errors) => {
            assert!(errors.len() > 0, "an error result holds errors");
            let lines = text.lines().count().max(1);
            for e in errors.iter() {
                let shown = e.to_string();
                assert!(shown.starts_with("fuzz.toml"), "{shown}");
                assert!(!e.message.is_empty(), "{shown}");
                if let Some(at) = e.at {
                    assert!(
                        at.line >= 1 && at.line <= lines + 1,
                        "line {} of {lines}: {shown}",
                        at.line
                    );
                    assert!(at.column >= 1, "{shown}");
                }
            }
        }
    }
});
