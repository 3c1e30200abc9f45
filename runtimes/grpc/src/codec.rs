//! A tonic codec for prost-reflect's dynamic messages, and the protobuf
//! JSON mapping that turns them into the JSON Lua tables cross as (int64 as
//! strings, bytes as base64, enums by name, proto field names, fields
//! without presence written even at their default value).

use prost::Message;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, Kind, MessageDescriptor, SerializeOptions,
};
use serde_json::Value;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use crate::error::Error;

/// Encodes any dynamic message; decodes into `response`'s type.
pub struct DynamicCodec {
    response: MessageDescriptor,
}

impl DynamicCodec {
    pub fn new(response: MessageDescriptor) -> Self {
        DynamicCodec { response }
    }
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> DynamicEncoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> DynamicDecoder {
        DynamicDecoder(self.response.clone())
    }
}

pub struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("cannot encode the request: {e}")))
    }
}

pub struct DynamicDecoder(MessageDescriptor);

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        DynamicMessage::decode(self.0.clone(), src)
            .map(Some)
            .map_err(|e| {
                Status::internal(format!(
                    "cannot decode the response as {}: {e}",
                    self.0.full_name()
                ))
            })
    }
}

/// A message of type `desc` from its JSON form. Unknown fields are errors;
/// empty input is the empty message.
///
/// Lua has one empty table, which cjson writes as `{}`: when the straight
/// parse fails, empty objects where a list belongs (and empty arrays where
/// a message or map belongs) are fixed up and the parse is tried again.
pub fn from_json(desc: &MessageDescriptor, json: &[u8]) -> Result<DynamicMessage, Error> {
    if json.is_empty() {
        return Ok(DynamicMessage::new(desc.clone()));
    }
    let bad = |e: serde_json::Error| Error::BadMessage {
        message: desc.full_name().to_string(),
        reason: e.to_string(),
    };
    let mut de = serde_json::Deserializer::from_slice(json);
    let first = DynamicMessage::deserialize_with_options(desc.clone(), &mut de, &OPTIONS)
        .and_then(|m| de.end().map(|_| m));
    match first {
        Ok(msg) => Ok(msg),
        Err(e) => {
            let Ok(mut value) = serde_json::from_slice::<Value>(json) else {
                return Err(bad(e));
            };
            if !fix_empty_tables(&mut value, desc) {
                return Err(bad(e));
            }
            DynamicMessage::deserialize_with_options(desc.clone(), value, &OPTIONS)
                .map_err(|_| bad(e))
        }
    }
}

const OPTIONS: DeserializeOptions = DeserializeOptions::new();

fn is_empty_object(v: &Value) -> bool {
    matches!(v, Value::Object(m) if m.is_empty())
}

fn is_empty_array(v: &Value) -> bool {
    matches!(v, Value::Array(a) if a.is_empty())
}

/// Rewrites empty tables to the shape the field wants; true if it changed
/// anything.
fn fix_empty_tables(value: &mut Value, desc: &MessageDescriptor) -> bool {
    if is_empty_array(value) {
        *value = Value::Object(Default::default());
        return true;
    }
    let Value::Object(map) = value else {
        return false;
    };
    let mut changed = false;
    for (key, v) in map.iter_mut() {
        let Some(field) = desc
            .get_field_by_name(key)
            .or_else(|| desc.get_field_by_json_name(key))
        else {
            continue;
        };
        let message = match field.kind() {
            Kind::Message(m) => Some(m),
            _ => None,
        };
        if field.is_list() {
            if is_empty_object(v) {
                *v = Value::Array(Vec::new());
                changed = true;
            } else if let (Value::Array(items), Some(m)) = (&mut *v, &message) {
                for item in items {
                    changed |= fix_empty_tables(item, m);
                }
            }
        } else if field.is_map() {
            if is_empty_array(v) {
                *v = Value::Object(Default::default());
                changed = true;
            } else if let (Value::Object(entries), Some(entry)) = (&mut *v, &message) {
                if let Kind::Message(m) = entry.map_entry_value_field().kind() {
                    for item in entries.values_mut() {
                        changed |= fix_empty_tables(item, &m);
                    }
                }
            }
        } else if let Some(m) = &message {
            changed |= fix_empty_tables(v, m);
        }
    }
    changed
}

/// Fields without presence (proto3 scalars and enums, lists, maps) are
/// written even when they hold their default, as lua-protobuf decodes
/// proto3: `feature_count = 0` is there for arithmetic, a list is `{}`.
/// Message fields, oneof members and `optional` fields that are not set
/// stay out (nil), also as there.
const SERIALIZE: SerializeOptions = SerializeOptions::new()
    .use_proto_field_name(true)
    .skip_default_fields(false);

/// The message's JSON form.
pub fn to_json(msg: &DynamicMessage, out: &mut Vec<u8>) -> Result<(), Error> {
    let mut ser = serde_json::Serializer::new(out);
    msg.serialize_with_options(&mut ser, &SERIALIZE)
        .map_err(|e| {
            Error::Status(Status::internal(format!(
                "cannot convert the response to JSON: {e}"
            )))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc() -> MessageDescriptor {
        crate::protos::load_source(
            r#"syntax = "proto3"; package codec.test;
               enum E { Z = 0; ONE = 1; }
               message M { int64 big = 1; bytes raw = 2; E e = 3; map<string, int32> m = 4;
                           repeated string tags = 5; oneof o { string a = 6; int32 b = 7; } }
               service S { rpc Call (M) returns (M); }"#,
            &[],
        )
        .unwrap();
        crate::protos::method("/codec.test.S/Call").unwrap().input()
    }

    #[test]
    fn json_mapping_round_trips() {
        let d = desc();
        let json = br#"{"big":"-9007199254740993","raw":"AAH/","e":"ONE","m":{"k":2},"tags":["x","y"],"b":5}"#;
        let msg = from_json(&d, json).unwrap();
        let mut out = Vec::new();
        to_json(&msg, &mut out).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let want: serde_json::Value = serde_json::from_slice(json).unwrap();
        assert_eq!(back, want);
    }

    #[test]
    fn empty_lua_tables_fit_lists_maps_and_messages() {
        let d = desc();
        let msg = from_json(&d, br#"{"tags":{},"m":[],"raw":""}"#).unwrap();
        let mut out = Vec::new();
        to_json(&msg, &mut out).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            back,
            serde_json::json!({"big": "0", "raw": "", "e": "Z", "m": {}, "tags": []})
        );
        assert!(from_json(&d, b"[]").is_ok());
    }

    #[test]
    fn tables_that_do_not_fit_are_errors() {
        let d = desc();
        for bad in [
            &br#"{"nope":1}"#[..],
            br#"{"big":[1]}"#,
            br#"{"e":"TWO"}"#,
            b"[1]",
            b"{",
        ] {
            let e = from_json(&d, bad).err().unwrap().to_string();
            assert!(e.contains("does not fit message codec.test.M"), "{e}");
        }
        assert!(from_json(&d, b"").is_ok());
    }
}
