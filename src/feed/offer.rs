//! A client's permessage-deflate offers (RFC 7692 §5 and §7), checked before the WebSocket
//! library sees them. The library takes the first offer's parameters as they come: it
//! ignores unknown ones and repeated ones, reads a list of offers as no offer, and answers
//! `server_max_window_bits=8` with a window it cannot keep to. Here an offer that breaks the
//! RFC, or asks for what zlib cannot do, is declined, the next one is tried, and the one
//! accepted is handed on alone, in canonical form; a client with none is served without
//! compression rather than refused.

/// The extension's registered name.
const NAME: &str = "permessage-deflate";

/// The first offer in `header` (the `Sec-WebSocket-Extensions` values, joined by commas)
/// that Cairn can accept, as the one offer to hand on; `None` to serve uncompressed.
pub fn accepted(header: &str) -> Option<String> {
    header.split(',').find_map(check)
}

/// One offer, checked: `Some` in canonical form if it is a valid permessage-deflate offer
/// that zlib can honour.
fn check(offer: &str) -> Option<String> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut server_bits = None;
    let (mut client_bits, mut server_reset, mut client_reset) = (false, false, false);
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(unquote(value.trim())?)),
            None => (param, None),
        };
        let once = |seen: bool| (!seen).then_some(());
        match (name, value) {
            ("server_no_context_takeover", None) => {
                once(server_reset)?;
                server_reset = true;
            }
            ("client_no_context_takeover", None) => {
                once(client_reset)?;
                client_reset = true;
            }
            // zlib's raw deflate cannot keep to a window of 8 bits, only 9 to 15.
            ("server_max_window_bits", Some(bits)) => {
                once(server_bits.is_some())?;
                server_bits = Some(window_bits(bits).filter(|b| *b >= 9)?);
            }
            // The client's own window: any window of ours inflates what it sends.
            ("client_max_window_bits", bits) => {
                once(client_bits)?;
                if let Some(bits) = bits {
                    window_bits(bits)?;
                }
                client_bits = true;
            }
            _ => return None,
        }
    }
    let mut canonical = String::from(NAME);
    if server_reset {
        canonical.push_str("; server_no_context_takeover");
    }
    if client_reset {
        canonical.push_str("; client_no_context_takeover");
    }
    if let Some(bits) = server_bits {
        canonical.push_str(&format!("; server_max_window_bits={bits}"));
    }
    // Offered with or without a value, the answer names one (the library's smallest): the
    // client then compresses its few messages in a small window.
    if client_bits {
        canonical.push_str("; client_max_window_bits");
    }
    Some(canonical)
}

/// A token or a quoted string's content (RFC 6455 §9.1); `None` if a quote is unbalanced.
fn unquote(value: &str) -> Option<&str> {
    match value.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"'),
        None => (!value.contains('"')).then_some(value),
    }
}

/// A window size as RFC 7692 §7.1.2 spells it: 8 to 15, in decimal, without a leading zero.
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offers_browsers_and_python_make_are_accepted() {
        // Chromium and Python websockets.
        assert_eq!(
            accepted("permessage-deflate; client_max_window_bits").as_deref(),
            Some("permessage-deflate; client_max_window_bits")
        );
        // Firefox.
        assert_eq!(
            accepted("permessage-deflate").as_deref(),
            Some("permessage-deflate")
        );
        assert_eq!(
            accepted(
                "permessage-deflate; server_max_window_bits=10; client_max_window_bits=\"12\"; \
                 server_no_context_takeover"
            )
            .as_deref(),
            Some(
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=10; \
                 client_max_window_bits"
            )
        );
    }

    #[test]
    fn a_bad_offer_is_declined_and_the_next_one_tried() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=012",
            "permessage-deflate; server_max_window_bits=-1",
            "permessage-deflate; server_max_window_bits=99999999999999999999",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=\"10",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=9",
            "permessage-deflate; mystery",
            "permessage-deflate;;",
            "x-webkit-deflate-frame",
            "",
            ";;;,,,",
        ] {
            assert_eq!(accepted(bad), None, "{bad}");
            assert_eq!(
                accepted(&format!("{bad}, permessage-deflate")).as_deref(),
                Some("permessage-deflate"),
                "{bad}"
            );
        }
    }
}
