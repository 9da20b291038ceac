//! Config parsing: `Config::from_toml_str` on arbitrary text (invalid UTF-8 is replaced, as
//! a file read lossily would be), and the size and duration parsers on the same text.
//!
//! Must hold: no panic; every refusal renders its message; a config that is accepted, written
//! back as TOML with every key (`ringpost_fuzz::config_text`), reads back as the same config;
//! a size or duration that parses reads back the same from its plain form (bytes, ms).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpost::config::units::{parse_duration, parse_size};
use ringpost::config::Config;
use ringpost_fuzz::config_text::render;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Config::from_toml_str(&text) {
        Ok(cfg) => {
            let again = render(&cfg);
            let back = Config::from_toml_str(&again)
                .unwrap_or_else(|e| panic!("the written-back config is refused: {e}\n{again}"));
            assert_eq!(back, cfg, "written back:\n{again}");
            // What the broker derives from a valid config.
            let _ = (cfg.shard_count(), cfg.heartbeat(), cfg.cpu_for_shard(0));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    if let Ok(n) = parse_size(&text) {
        assert_eq!(parse_size(&n.to_string()), Ok(n), "size {text:?}");
    }
    if let Ok(d) = parse_duration(&text) {
        let plain = format!("{}ms", d.as_millis());
        assert_eq!(parse_duration(&plain), Ok(d), "duration {text:?}");
    }
});
