//! gRPC metadata to and from the JSON objects Lua sees: string values;
//! keys ending in `-bin` carry base64 (as on the wire).

use std::collections::BTreeMap;

use base64::Engine;
use tonic::metadata::{
    AsciiMetadataKey, AsciiMetadataValue, BinaryMetadataKey, BinaryMetadataValue, KeyAndValueRef,
    MetadataMap,
};

use crate::error::Error;

/// Headers that belong to the transport, not to the caller.
fn is_transport(key: &str) -> bool {
    matches!(
        key,
        "content-type" | "grpc-status" | "grpc-message" | "grpc-status-details-bin" | "te"
    ) || key.starts_with(':')
}

/// The map as a JSON object; repeated keys are joined with ", ".
pub fn to_json(map: &MetadataMap) -> Vec<u8> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for kv in map.iter() {
        let (key, value) = match kv {
            KeyAndValueRef::Ascii(k, v) => (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_encoded_bytes()).into_owned(),
            ),
            KeyAndValueRef::Binary(k, v) => (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_encoded_bytes()).into_owned(),
            ),
        };
        if is_transport(&key) {
            continue;
        }
        out.entry(key)
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    serde_json::to_vec(&out).unwrap_or_else(|_| b"{}".to_vec())
}

/// Parses a JSON object of string values into `map` (replacing keys
/// already there). Empty input adds nothing.
pub fn merge_json(map: &mut MetadataMap, json: &[u8]) -> Result<(), Error> {
    if json.is_empty() {
        return Ok(());
    }
    let pairs: BTreeMap<String, String> = serde_json::from_slice(json)
        .map_err(|e| Error::Metadata(format!("want a table of strings: {e}")))?;
    for (k, v) in pairs {
        insert(map, &k, &v)?;
    }
    Ok(())
}

/// Inserts one pair; `-bin` values are base64 (padding optional).
pub fn insert(map: &mut MetadataMap, key: &str, value: &str) -> Result<(), Error> {
    let key = key.to_ascii_lowercase();
    if key.ends_with("-bin") {
        let k = BinaryMetadataKey::from_bytes(key.as_bytes())
            .map_err(|e| Error::Metadata(format!("key '{key}': {e}")))?;
        let raw = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(value.trim_end_matches('='))
            .map_err(|e| Error::Metadata(format!("'{key}' wants base64: {e}")))?;
        map.insert_bin(k, BinaryMetadataValue::from_bytes(&raw));
    } else {
        let k = AsciiMetadataKey::from_bytes(key.as_bytes())
            .map_err(|e| Error::Metadata(format!("key '{key}': {e}")))?;
        let v: AsciiMetadataValue = value
            .parse()
            .map_err(|e| Error::Metadata(format!("value of '{key}': {e}")))?;
        map.insert(k, v);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_ascii_and_binary_and_skips_transport_headers() {
        let mut md = MetadataMap::new();
        merge_json(&mut md, br#"{"X-Id":"7","trace-bin":"AAH/"}"#).unwrap();
        md.insert("content-type", "application/grpc".parse().unwrap());
        let json: serde_json::Value = serde_json::from_slice(&to_json(&md)).unwrap();
        assert_eq!(json, serde_json::json!({"x-id": "7", "trace-bin": "AAH/"}));
    }

    #[test]
    fn bad_metadata_is_an_error() {
        let mut md = MetadataMap::new();
        for bad in [
            &br#"{"a":1}"#[..],
            br#"{"bad key":"v"}"#,
            br#"{"k":"line\nbreak"}"#,
            br#"{"k-bin":"***"}"#,
            b"[]",
        ] {
            assert!(
                merge_json(&mut md, bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
