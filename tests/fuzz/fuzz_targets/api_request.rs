//! The API's input: a request line as the init reads it, and a reply line as the CLI reads it.
//! Nothing may panic; a request that parses must serialise and parse back the same.
#![no_main]
#![allow(clippy::expect_used, clippy::panic)] // a failed assertion is a finding

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(req) = ros_api::parse_request(line) {
        let again = serde_json::json!({ "version": ros_api::VERSION, "request": req }).to_string();
        let back = ros_api::parse_request(&again).expect("a parsed request parses again");
        assert_eq!(format!("{req:?}"), format!("{back:?}"));
    }
    let _ = serde_json::from_str::<ros_api::Reply>(line);
});
