//! A protobuf list read as its body arrives: the list's metadata, then each object still
//! encoded, handed out as soon as its last byte is in. The whole body is never held.
//!
//! The first list is asked for at resourceVersion 0, as client-go's informers ask: the API
//! server answers it from its watch cache in one response, all 100,000 Services of the
//! largest bench cluster at once (22 MB), whatever limit the request names. Read whole, the
//! two kinds' bodies (51 MB) were held until their last object was handed on; read as they
//! arrive, a few kilobytes are.
//!
//! The wire format: the magic `k8s\0`, then a `runtime.Unknown` whose field 2 (`raw`) holds
//! the list message, whose field 1 is its `ListMeta` and field 2 each item. The envelope is
//! walked into rather than read whole; every other field is read whole and passed over.

use bytes::{Buf, Bytes, BytesMut};
use k8s_pb::apimachinery::pkg::apis::meta::v1 as pb_meta;
use prost::Message;

use super::protobuf::{DecodeError, MAGIC};

/// What a list's body yields, in the order it comes.
#[derive(Debug, PartialEq)]
pub enum Piece {
    /// The list's metadata: the version to watch from and the next page's token.
    Meta {
        resource_version: Option<String>,
        continue_token: Option<String>,
    },
    /// One object, still encoded.
    Item(Bytes),
}

/// Where the reader is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Magic,
    /// Among the `runtime.Unknown`'s fields.
    Envelope,
    /// Inside the list message (`raw`), with this many of its bytes still to come.
    List {
        left: usize,
    },
}

/// A push parser: [`push`](Self::push) the body's chunks, take [`next`](Self::next)
/// pieces until it says it needs more, and [`finish`](Self::finish) at the body's end.
#[derive(Debug)]
pub struct ListReader {
    buffered: BytesMut,
    stage: Stage,
}

impl Default for ListReader {
    fn default() -> Self {
        Self {
            buffered: BytesMut::new(),
            stage: Stage::Magic,
        }
    }
}

/// A field's header as read from the front of a buffer.
struct Field {
    number: u64,
    /// The bytes of its tag (and length, for a length-delimited field).
    header: usize,
    /// The bytes of its value after the header.
    value: usize,
    delimited: bool,
}

impl ListReader {
    /// Adds the body's next bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buffered.extend_from_slice(chunk);
    }

    /// The next piece, or `None` until more of the body is pushed.
    pub fn next(&mut self) -> Result<Option<Piece>, DecodeError> {
        loop {
            match self.stage {
                Stage::Magic => {
                    if self.buffered.len() < MAGIC.len() {
                        return Ok(None);
                    }
                    if !self.buffered.starts_with(MAGIC) {
                        return Err(DecodeError::NoMagic);
                    }
                    self.buffered.advance(MAGIC.len());
                    self.stage = Stage::Envelope;
                }
                Stage::Envelope => {
                    let Some(field) = field(&self.buffered)? else {
                        return Ok(None);
                    };
                    if field.number == 2 && field.delimited {
                        // Into the list, however long: its pieces come one by one.
                        self.buffered.advance(field.header);
                        self.stage = Stage::List { left: field.value };
                        continue;
                    }
                    if self.take(&field).is_none() {
                        return Ok(None);
                    }
                }
                Stage::List { left: 0 } => self.stage = Stage::Envelope,
                Stage::List { left } => {
                    let Some(field) = field(&self.buffered)? else {
                        return Ok(None);
                    };
                    let size = field.header + field.value;
                    if size > left {
                        return Err(DecodeError::Truncated);
                    }
                    let Some(value) = self.take(&field) else {
                        return Ok(None);
                    };
                    self.stage = Stage::List { left: left - size };
                    match field.number {
                        1 if field.delimited => {
                            let meta = pb_meta::ListMeta::decode(value)?;
                            return Ok(Some(Piece::Meta {
                                resource_version: meta.resource_version,
                                // An empty token is no token (the server's last page).
                                continue_token: meta.r#continue.filter(|c| !c.is_empty()),
                            }));
                        }
                        2 if field.delimited => return Ok(Some(Piece::Item(value))),
                        _ => {}
                    }
                }
            }
        }
    }

    /// At the body's end: an error if it ended inside the list or a field.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.stage {
            Stage::Magic => Err(DecodeError::NoMagic),
            Stage::Envelope if self.buffered.is_empty() => Ok(()),
            _ => Err(DecodeError::Truncated),
        }
    }

    /// The value of `field`, taken off the front with its header once all of it is in.
    /// A copy: what is handed on owns its bytes, so the buffer's memory is reused.
    fn take(&mut self, field: &Field) -> Option<Bytes> {
        let end = field.header + field.value;
        if self.buffered.len() < end {
            return None;
        }
        let value = Bytes::copy_from_slice(&self.buffered[field.header..end]);
        self.buffered.advance(end);
        Some(value)
    }
}

/// The field at the front of `bytes`: `None` while its header is not all there.
fn field(bytes: &[u8]) -> Result<Option<Field>, DecodeError> {
    let Some((tag, tag_len)) = varint(bytes)? else {
        return Ok(None);
    };
    let number = tag >> 3;
    let (value, header, delimited) = match tag & 7 {
        // A varint: its own length is its value's.
        0 => match varint(&bytes[tag_len..])? {
            Some((_, len)) => (len, tag_len, false),
            None => return Ok(None),
        },
        1 => (8, tag_len, false),
        5 => (4, tag_len, false),
        2 => match varint(&bytes[tag_len..])? {
            Some((len, len_len)) => (
                usize::try_from(len).map_err(|_| DecodeError::Truncated)?,
                tag_len + len_len,
                true,
            ),
            None => return Ok(None),
        },
        _ => return Err(DecodeError::WireType(tag & 7)),
    };
    Ok(Some(Field {
        number,
        header,
        value,
        delimited,
    }))
}

/// A varint at the front of `bytes` and its length: `None` while it is not all there.
fn varint(bytes: &[u8]) -> Result<Option<(u64, usize)>, DecodeError> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 10 {
        return Err(DecodeError::Varint);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use k8s_pb::{api::core::v1 as pb_core, apimachinery::pkg::runtime::Unknown};

    use super::*;

    /// A list as the API server sends it, with `items` named `svc-0`, `svc-1`, ...
    fn body(items: usize, continue_token: &str) -> Vec<u8> {
        let list = pb_core::ServiceList {
            metadata: Some(pb_meta::ListMeta {
                resource_version: Some("77".into()),
                r#continue: Some(continue_token.into()),
                ..Default::default()
            }),
            items: (0..items)
                .map(|i| pb_core::Service {
                    metadata: Some(pb_meta::ObjectMeta {
                        name: Some(format!("svc-{i}")),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        };
        let unknown = Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                api_version: Some("v1".into()),
                kind: Some("ServiceList".into()),
            }),
            raw: Some(list.encode_to_vec()),
            content_encoding: Some(String::new()),
            content_type: Some("application/vnd.kubernetes.protobuf".into()),
        };
        [MAGIC, unknown.encode_to_vec().as_slice()].concat()
    }

    /// Every piece of `body` pushed `chunk` bytes at a time, then the end checked.
    fn read(body: &[u8], chunk: usize) -> Result<Vec<Piece>, DecodeError> {
        let mut reader = ListReader::default();
        let mut pieces = Vec::new();
        for part in body.chunks(chunk) {
            reader.push(part);
            while let Some(piece) = reader.next()? {
                pieces.push(piece);
            }
        }
        reader.finish()?;
        Ok(pieces)
    }

    fn names(pieces: &[Piece]) -> Vec<String> {
        pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Item(bytes) => pb_core::Service::decode(bytes.clone())
                    .ok()
                    .and_then(|s| s.metadata)
                    .and_then(|m| m.name),
                Piece::Meta { .. } => None,
            })
            .collect()
    }

    #[test]
    fn a_list_reads_the_same_in_chunks_of_any_size() {
        let body = body(300, "");
        let whole = read(&body, body.len()).expect("decodes");
        assert_eq!(
            whole[0],
            Piece::Meta {
                resource_version: Some("77".into()),
                continue_token: None
            }
        );
        let expected: Vec<String> = (0..300).map(|i| format!("svc-{i}")).collect();
        assert_eq!(names(&whole), expected);
        for chunk in [1, 2, 3, 7, 64, 1000] {
            assert_eq!(
                read(&body, chunk).expect("decodes"),
                whole,
                "chunks of {chunk}"
            );
        }
    }

    #[test]
    fn items_are_handed_out_as_soon_as_they_are_in() {
        let body = body(3, "next");
        let mut reader = ListReader::default();
        let mut seen = Vec::new();
        for (at, byte) in body.iter().enumerate() {
            reader.push(&[*byte]);
            while let Some(piece) = reader.next().expect("decodes") {
                seen.push((at, piece));
            }
        }
        // The metadata first, with the next page's token, then the three objects, each
        // before the body ends (the envelope's later fields come after the list).
        assert!(matches!(
            &seen[0].1,
            Piece::Meta { continue_token: Some(t), .. } if t == "next"
        ));
        assert_eq!(seen.len(), 4);
        assert!(seen[3].0 < body.len() - 1);
        reader.finish().expect("a whole body");
    }

    #[test]
    fn an_empty_list_has_its_metadata_and_no_item() {
        let pieces = read(&body(0, ""), 5).expect("decodes");
        assert_eq!(pieces.len(), 1);
        assert!(matches!(pieces[0], Piece::Meta { .. }));
    }

    #[test]
    fn bodies_not_as_the_api_server_writes_them_are_errors() {
        assert!(matches!(
            read(b"{\"items\": []}", 4),
            Err(DecodeError::NoMagic)
        ));
        assert!(matches!(read(b"k8", 4), Err(DecodeError::NoMagic)));
        // Cut short: inside the list, inside an item.
        let body = body(5, "");
        for cut in [MAGIC.len() + 1, body.len() / 2, body.len() - 1] {
            assert!(
                matches!(read(&body[..cut], 16), Err(DecodeError::Truncated)),
                "cut at {cut}"
            );
        }
        // A field longer than the list that holds it.
        let mut bad = MAGIC.to_vec();
        bad.extend([0x12, 3, 0x12, 9, 0]);
        assert!(matches!(read(&bad, 64), Err(DecodeError::Truncated)));
        // Wire types 3 and 4 (groups) are not in Kubernetes' messages.
        assert!(matches!(
            read(&[MAGIC, &[0x0b]].concat(), 8),
            Err(DecodeError::WireType(3))
        ));
        // An overlong varint.
        assert!(matches!(
            read(&[MAGIC, &[0x80; 11]].concat(), 64),
            Err(DecodeError::Varint)
        ));
    }
}
