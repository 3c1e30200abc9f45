//! A tonic codec for prost-reflect's dynamic messages, and the protobuf
//! JSON mapping that turns them into the JSON Lua tables cross as (int64 as
//! strings, bytes as base64, enums by name, proto field names).

use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};
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
pub fn from_json(desc: &MessageDescriptor, json: &[u8]) -> Result<DynamicMessage, Error> {
    if json.is_empty() {
        return Ok(DynamicMessage::new(desc.clone()));
    }
    let bad = |e: serde_json::Error| Error::BadMessage {
        message: desc.full_name().to_string(),
        reason: e.to_string(),
    };
    let mut de = serde_json::Deserializer::from_slice(json);
    let msg =
        DynamicMessage::deserialize_with_options(desc.clone(), &mut de, &DeserializeOptions::new())
            .map_err(bad)?;
    de.end().map_err(bad)?;
    Ok(msg)
}

const SERIALIZE: SerializeOptions = SerializeOptions::new().use_proto_field_name(true);

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
