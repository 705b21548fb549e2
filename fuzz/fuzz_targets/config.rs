//! A config file as `cairn check` and `cairn run` read it: `${VAR}` substitution, YAML, the
//! schema and every validation, and the error report with its line and column.
#![no_main]

use cairn::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| match name {
        "TOKEN" => Some("abc #def: {x}".to_string()),
        "EMPTY" => Some(String::new()),
        _ => None,
    };
    if let Err(report) = Config::from_text("fuzz.yaml", text, env) {
        let _ = report.to_string();
    }
});
