//! Run settings as TOML (`config.toml`, `--config`), parsed and validated.
#![no_main]

use haba::distill::DistillConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Ok(config) = DistillConfig::from_toml(text) {
        if config.validate().is_ok() {
            // A valid config survives its own round trip.
            let again = DistillConfig::from_toml(&config.to_toml()).expect("round trip");
            assert_eq!(again.to_toml(), config.to_toml());
        }
    }
});
