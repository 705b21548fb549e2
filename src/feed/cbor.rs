//! The feed's binary form: each JSON message as the same CBOR (RFC 8949) data item, for a
//! client that asks for it with `?format=cbor`. Maps keep their keys (sorted), integers stay
//! integers, and a float takes the shortest of half, single or double precision that holds
//! it exactly, as in the uplink's CBOR batches.

use bytes::Bytes;
use minicbor::Encoder;
use serde_json::Value;

use crate::uplink::encoding::cbor::shortest_float;

/// `json` (a feed message) as CBOR; text that is not JSON (which the hub never makes)
/// becomes a CBOR text string, so that nothing is dropped silently.
pub fn from_json(json: &[u8]) -> Bytes {
    let mut e = Encoder::new(Vec::with_capacity(json.len()));
    match serde_json::from_slice::<Value>(json) {
        Ok(value) => item(&mut e, &value),
        Err(_) => {
            let _ = e.str(&String::from_utf8_lossy(json));
        }
    }
    Bytes::from(e.into_writer())
}

fn item(e: &mut Encoder<Vec<u8>>, value: &Value) {
    // Writing to a Vec cannot fail.
    let _ = match value {
        Value::Null => e.null(),
        Value::Bool(b) => e.bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => e.u64(u),
            (None, Some(i), _) => e.i64(i),
            (None, None, Some(x)) => shortest_float(e, x),
            (None, None, None) => e.null(),
        },
        Value::String(s) => e.str(s),
        Value::Array(items) => {
            let _ = e.array(items.len() as u64);
            items.iter().for_each(|v| item(e, v));
            Ok(&mut *e)
        }
        Value::Object(map) => {
            let _ = e.map(map.len() as u64);
            for (key, v) in map {
                let _ = e.str(key);
                item(e, v);
            }
            Ok(&mut *e)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_their_shape_and_floats_shrink_exactly() {
        let json = br#"{"type":"reading","feed_seq":7,"values":{"t":21.5,"p":1.1,"n":-3,"on":true,"x":null},"ts":"2026-12-03T08:00:00.000Z"}"#;
        let cbor = from_json(json);
        let mut d = minicbor::Decoder::new(&cbor);
        assert_eq!(d.map().unwrap(), Some(4));
        assert_eq!(d.str().unwrap(), "feed_seq");
        assert_eq!(d.u64().unwrap(), 7);
        assert_eq!(d.str().unwrap(), "ts");
        assert_eq!(d.str().unwrap(), "2026-12-03T08:00:00.000Z");
        assert_eq!(d.str().unwrap(), "type");
        assert_eq!(d.str().unwrap(), "reading");
        assert_eq!(d.str().unwrap(), "values");
        assert_eq!(d.map().unwrap(), Some(5));
        assert_eq!(d.str().unwrap(), "n");
        assert_eq!(d.i64().unwrap(), -3);
        assert_eq!(d.str().unwrap(), "on");
        assert!(d.bool().unwrap());
        assert_eq!(d.str().unwrap(), "p");
        assert_eq!(d.f64().unwrap(), 1.1);
        assert_eq!(d.str().unwrap(), "t");
        assert_eq!(d.f16().unwrap(), 21.5);
        assert_eq!(d.str().unwrap(), "x");
        d.null().unwrap();
        assert_eq!(d.position(), cbor.len());
        assert!(cbor.len() < json.len());
    }

    #[test]
    fn text_that_is_not_json_is_kept_as_a_string() {
        let cbor = from_json(b"not json");
        assert_eq!(minicbor::Decoder::new(&cbor).str().unwrap(), "not json");
    }
}
