//! A client's `Sec-WebSocket-Extensions` offers (RFC 7692), checked before the WebSocket
//! library reads them: an accepted offer is one permessage-deflate offer in canonical form,
//! which is accepted again unchanged.
#![no_main]

use cairn::feed::offer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(canonical) = offer::accepted(header) {
        assert!(canonical.starts_with("permessage-deflate"), "{canonical}");
        assert!(!canonical.contains(','), "{canonical}");
        assert_eq!(offer::accepted(&canonical).as_deref(), Some(canonical.as_str()));
    }
});
