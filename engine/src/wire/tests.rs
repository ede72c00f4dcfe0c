//! Round trips, limits, hostile input and bulk planning for the wire format.

use std::io::{self, Cursor, Write};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rkyv::util::AlignedVec;

use super::*;
use crate::keys::KeyHash;
use crate::pool::Location;

fn entry(i: u64) -> DirEntry {
    DirEntry::new(
        KeyHash(0x0123_4567_89ab_cdef_0000_0000_0000_0000 | u128::from(i)),
        node_hash("node-a", 1),
        (i % 4) as u16,
        Location {
            offset: i * 4096,
            generation: (7 << 32) | i,
            len: 4096,
        },
        i & 1 == 1,
    )
}

fn member(name: &str, shards: u16) -> MemberInfo {
    MemberInfo {
        node_id: name.to_owned(),
        host: "10.0.0.7".to_owned(),
        meta_port: 31999,
        control_endpoints: (0..shards)
            .map(|s| Endpoint {
                host: "10.0.0.7".to_owned(),
                port: 32000 + s,
            })
            .collect(),
        shard_count: shards,
        incarnation: 0xdead_beef_0000_0001,
        pool_bytes: 8 << 30,
    }
}

/// Page bytes of `sample_read_reply`: item 0 is `0xA0..`, item 2 `0xC0..`.
const PAGE_BYTES: usize = 8;

fn sample_read_items() -> Vec<ReadItem> {
    (0..3)
        .map(|i| ReadItem {
            offset: i * 4096,
            generation: 9,
            len: PAGE_BYTES as u32,
        })
        .collect()
}

fn sample_read_reply() -> (DataReadReply, Vec<u8>) {
    let reply = DataReadReply {
        status: vec![
            ReadStatus::Ok.code(),
            ReadStatus::StaleGeneration.code(),
            ReadStatus::Ok.code(),
        ],
    };
    let mut bulk = vec![0xA0u8; PAGE_BYTES];
    bulk.extend_from_slice(&[0xC0u8; PAGE_BYTES]);
    (reply, bulk)
}

/// One message of every kind, with non-trivial contents.
fn samples() -> Vec<Message> {
    vec![
        Hello {
            protocol_version: PROTOCOL_VERSION,
            node_id: "node-a".into(),
            purpose: Purpose::Data,
        }
        .into(),
        HelloAck {
            node_id: "node-b ünïcode".into(),
        }
        .into(),
        ErrorReply {
            code: error_code::NOT_OWNER,
            message: "not the owner of 3 keys; refresh membership".into(),
        }
        .into(),
        Register {
            member: member("node-a", 2),
        }
        .into(),
        Heartbeat {
            member: member("node-a", 2),
        }
        .into(),
        Deregister {
            node_id: "node-a".into(),
            incarnation: 42,
        }
        .into(),
        MembersRequest.into(),
        MembersReply {
            members: vec![
                member("node-a", 2),
                member("node-b", 0),
                member("node-c", 8),
            ],
            outcome: MembersOutcome::Members as u8,
            registry_instance: 7,
            registry_changes: 3,
            departed: vec![
                Deregister {
                    node_id: "node-d".into(),
                    incarnation: 4,
                },
                Deregister {
                    node_id: "node-e".into(),
                    incarnation: u64::MAX,
                },
            ],
            reason: String::new(),
        }
        .into(),
        DirPut {
            entries: (0..5).map(entry).collect(),
        }
        .into(),
        DirPutAck { stored: 5 }.into(),
        DirGet {
            keys: (0..4u128)
                .map(|i| KeyHash(i << 100).to_be_bytes())
                .collect(),
        }
        .into(),
        DirGetReply {
            entries: vec![Some(entry(1)), None, Some(entry(2)), None],
        }
        .into(),
        DirDelete {
            node: node_hash("node-a", 1),
            keys: vec![KeyHash(5).to_be_bytes()],
        }
        .into(),
        DirDeleteAck { deleted: 1 }.into(),
        DataRead {
            node: node_hash("node-a", 1),
            items: sample_read_items(),
        }
        .into(),
        sample_read_reply().0.into(),
        DataPromote {
            keys: vec![KeyHash(9).to_be_bytes(), KeyHash(10).to_be_bytes()],
        }
        .into(),
        DataPromoteReply {
            entries: vec![None, Some(entry(3))],
        }
        .into(),
        RdmaConnect {
            node: node_hash("node-b", 1),
            shard: 1,
            rail: 2,
            seq: 41,
            live: vec![7, 9],
            endpoints: vec![QpInfo {
                qp_num: 9,
                psn: 0x12_3456,
                lid: 0,
                gid: [0xfe; 16],
                mtu: 5,
            }],
        }
        .into(),
        RdmaConnectReply {
            rails: 2,
            endpoints: vec![QpInfo {
                qp_num: 40,
                psn: 77,
                lid: 3,
                gid: [1; 16],
                mtu: 3,
            }],
            pool_addr: 0x7f00_0000_0000,
            pool_rkey: 0xabcd,
        }
        .into(),
        DataValidate {
            node: node_hash("node-a", 1),
            items: sample_read_items(),
        }
        .into(),
        DataValidateReply {
            status: vec![ReadStatus::Ok as u8, ReadStatus::StaleGeneration as u8],
        }
        .into(),
    ]
}

fn bulk_of(msg: &Message) -> Vec<u8> {
    match msg {
        Message::DataReadReply(_) => sample_read_reply().1,
        _ => Vec::new(),
    }
}

fn encode(msg: &Message, request_id: u64) -> Vec<u8> {
    let bulk = bulk_of(msg);
    let mut out = Vec::new();
    msg.encode(request_id, bulk.len() as u64, &mut out).unwrap();
    out.extend_from_slice(&bulk);
    out
}

fn raw_header(magic: u32, version: u16, kind: u16, id: u64, meta: u32, bulk: u32) -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&magic.to_le_bytes());
    h[4..6].copy_from_slice(&version.to_le_bytes());
    h[6..8].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&id.to_le_bytes());
    h[16..20].copy_from_slice(&meta.to_le_bytes());
    h[20..24].copy_from_slice(&bulk.to_le_bytes());
    h
}

fn aligned(bytes: &[u8]) -> AlignedVec {
    let mut v: AlignedVec = AlignedVec::new();
    v.extend_from_slice(bytes);
    v
}

#[test]
fn every_kind_has_a_sample_and_round_trips() {
    let samples = samples();
    let kinds: Vec<Kind> = samples.iter().map(Message::kind).collect();
    assert_eq!(kinds, Kind::ALL.to_vec(), "one sample per kind, in order");
    for (i, msg) in samples.iter().enumerate() {
        let id = 1000 + i as u64;
        let bytes = encode(msg, id);
        let mut cur = Cursor::new(&bytes[..]);
        let mut meta = AlignedVec::new();
        let header = read_frame(&mut cur, &mut meta).unwrap();
        assert_eq!(header.kind, msg.kind());
        assert_eq!(header.request_id, id);
        assert_eq!(header.meta_len as usize, meta.len());
        assert_eq!(header.bulk_len as usize, bulk_of(msg).len());
        assert_eq!(header.frame_len_bytes(), bytes.len() as u64);
        assert_eq!(
            Message::decode(&header, &meta).unwrap(),
            *msg,
            "kind {}",
            header.kind
        );
        assert_eq!(
            cur.position() as usize,
            bytes.len() - header.bulk_len as usize
        );
    }
}

#[test]
fn typed_encode_and_in_place_decode_agree() {
    let reply = DirGetReply {
        entries: vec![Some(entry(3)), None],
    };
    let mut out = Vec::new();
    let header = encode_frame(&reply, 77, 0, &mut out).unwrap();
    assert_eq!(header.kind, Kind::DirGetReply);
    let parsed = FrameHeader::parse(out[..HEADER_BYTES].try_into().unwrap()).unwrap();
    assert_eq!(parsed, header);
    parsed.expect_kind(DirGetReply::KIND).unwrap();
    let meta = aligned(&out[HEADER_BYTES..]);
    let archived = decode_meta::<DirGetReply>(&meta).unwrap();
    assert_eq!(archived.entries.len(), 2);
    let first = archived.entries[0].as_ref().expect("entry 0 present");
    assert_eq!(first.key_hash(), entry(3).key_hash());
    assert_eq!(DirEntry::from(first), entry(3));
    assert!(archived.entries[1].is_none());
    assert_eq!(decode_owned::<DirGetReply>(&meta).unwrap(), reply);
}

#[test]
fn dir_entry_converts_to_and_from_pool_locations() {
    let loc = Location {
        offset: 123 * 4096,
        generation: (3 << 32) | 17,
        len: 65536,
    };
    let key = KeyHash(0xfeed_face_cafe_beef_0123_4567_89ab_cdef);
    let e = DirEntry::new(key, node_hash("n1", 1), 5, loc, true);
    assert_eq!(e.location(), loc);
    assert_eq!(e.key_hash(), key);
    assert_eq!(e.key, key.to_be_bytes());
    assert_eq!(ReadItem::from(loc).len, 65536);
    assert_eq!(
        node_hash("n1", 1),
        xxhash_rust::xxh3::xxh3_64_with_seed(b"n1", 1)
    );
    assert_ne!(node_hash("n1", 1), node_hash("n1", 2));
    assert_ne!(node_hash("n1", 1), node_hash("n2", 1));
}

#[test]
fn archived_sizes_stay_compact() {
    use std::mem::{align_of, size_of};
    assert_eq!(size_of::<ArchivedDirEntry>(), 48);
    assert_eq!(align_of::<ArchivedDirEntry>(), 8);
    assert_eq!(size_of::<rkyv::Archived<Option<DirEntry>>>(), 56);
    assert_eq!(size_of::<ArchivedReadItem>(), 24);
    // A DirPut of n entries costs 48 bytes per entry plus a fixed overhead.
    let meta_len = |n: u64| {
        let mut out = Vec::new();
        let msg = DirPut {
            entries: (0..n).map(entry).collect(),
        };
        encode_frame(&msg, 0, 0, &mut out).unwrap().meta_len as usize
    };
    assert_eq!(meta_len(101) - meta_len(1), 100 * 48);
}

#[test]
fn header_round_trips_and_checks_limits_in_order() {
    let ok = raw_header(
        MAGIC,
        PROTOCOL_VERSION,
        Kind::DataReadReply as u16,
        9,
        100,
        4096,
    );
    let h = FrameHeader::parse(&ok).unwrap();
    assert_eq!(
        h,
        FrameHeader {
            kind: Kind::DataReadReply,
            request_id: 9,
            meta_len: 100,
            bulk_len: 4096
        }
    );
    assert_eq!(h.to_bytes(), ok);

    let dirget = Kind::DirGet as u16;
    let err = FrameHeader::parse(&raw_header(0x5054_5448, 1, dirget, 0, 0, 0)).unwrap_err();
    assert!(
        matches!(
            err,
            WireError::BadMagic {
                found: 0x5054_5448,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("bad frame magic"), "{err}");

    // The version before this one (2: before RdmaConnect was numbered).
    let err = FrameHeader::parse(&raw_header(MAGIC, 2, dirget, 0, 0, 0)).unwrap_err();
    assert!(
        matches!(err, WireError::UnsupportedVersion { found: 2 }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("unsupported protocol version 2 (we speak 3)"),
        "{err}"
    );
    assert_eq!(err.code(), error_code::UNSUPPORTED_VERSION);

    for raw in [0u16, 0x04, 0x15, 0x26, 0x99, 0x38, 0xffff] {
        let err =
            FrameHeader::parse(&raw_header(MAGIC, PROTOCOL_VERSION, raw, 0, 0, 0)).unwrap_err();
        assert!(
            matches!(err, WireError::UnknownKind(k) if k == raw),
            "{raw}: {err}"
        );
        assert!(err.to_string().contains("unknown message kind"), "{err}");
    }

    FrameHeader::parse(&raw_header(
        MAGIC,
        PROTOCOL_VERSION,
        dirget,
        0,
        MAX_META_BYTES,
        0,
    ))
    .unwrap();
    let err = FrameHeader::parse(&raw_header(
        MAGIC,
        PROTOCOL_VERSION,
        dirget,
        0,
        MAX_META_BYTES + 1,
        0,
    ))
    .unwrap_err();
    assert!(matches!(err, WireError::MetaTooLarge { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "meta too large: {} > {} bytes",
            MAX_META_BYTES + 1,
            MAX_META_BYTES
        )
    );

    let reply = Kind::DataReadReply as u16;
    FrameHeader::parse(&raw_header(
        MAGIC,
        PROTOCOL_VERSION,
        reply,
        0,
        8,
        MAX_BULK_BYTES,
    ))
    .unwrap();
    let err = FrameHeader::parse(&raw_header(
        MAGIC,
        PROTOCOL_VERSION,
        reply,
        0,
        8,
        MAX_BULK_BYTES + 1,
    ))
    .unwrap_err();
    assert!(matches!(err, WireError::BulkTooLarge { .. }), "{err}");

    let err =
        FrameHeader::parse(&raw_header(MAGIC, PROTOCOL_VERSION, dirget, 0, 8, 1)).unwrap_err();
    assert!(
        matches!(
            err,
            WireError::UnexpectedBulk {
                kind: Kind::DirGet,
                len_bytes: 1
            }
        ),
        "{err}"
    );

    // Magic is checked before the version, the version before the kind.
    let err = FrameHeader::parse(&raw_header(0, 9, 0x99, 0, u32::MAX, u32::MAX)).unwrap_err();
    assert!(matches!(err, WireError::BadMagic { .. }));
    let err = FrameHeader::parse(&raw_header(MAGIC, 9, 0x99, 0, u32::MAX, u32::MAX)).unwrap_err();
    assert!(matches!(err, WireError::UnsupportedVersion { .. }));
}

#[test]
fn every_kind_number_parses_back() {
    for kind in Kind::ALL {
        assert_eq!(Kind::from_u16(kind.as_u16()), Some(kind));
    }
    assert_eq!(Kind::DataReadReply.to_string(), "DataReadReply (0x31)");
}

#[test]
fn oversized_header_is_refused_before_allocating() {
    let header = raw_header(
        MAGIC,
        PROTOCOL_VERSION,
        Kind::DirPut as u16,
        0,
        MAX_META_BYTES + 1,
        0,
    );
    let mut meta = AlignedVec::new();
    let err = read_frame(&mut Cursor::new(&header[..]), &mut meta).unwrap_err();
    assert!(matches!(err, WireError::MetaTooLarge { .. }), "{err}");
    assert_eq!(meta.capacity(), 0, "no allocation for a refused frame");
}

#[test]
fn an_announced_meta_that_never_comes_is_not_allocated_up_front() {
    // A valid header announcing 1 MiB of DirGet meta, then ten bytes.
    let get = DirGet {
        keys: vec![[9; 16]; 65_536],
    };
    let mut frame = Vec::new();
    encode_frame(&get, 1, 0, &mut frame).unwrap();
    let announced = frame.len() - HEADER_BYTES;
    frame.truncate(HEADER_BYTES + 10);
    let mut meta = AlignedVec::new();
    let err = read_frame(&mut Cursor::new(&frame[..]), &mut meta).unwrap_err();
    assert!(
        matches!(err, WireError::Truncated { section: "meta", got_bytes: 10, expected_bytes }
            if expected_bytes == announced as u64),
        "{err}"
    );
    assert!(meta.capacity() <= 128 << 10, "{} bytes", meta.capacity());
}

#[test]
fn truncated_input_is_reported_by_section() {
    let mut meta = AlignedVec::new();
    let err = read_frame(&mut Cursor::new(&[][..]), &mut meta).unwrap_err();
    assert!(matches!(err, WireError::Closed), "{err}");

    let frame = encode(&samples()[7], 5);
    for cut in 1..HEADER_BYTES {
        let err = read_frame(&mut Cursor::new(&frame[..cut]), &mut meta).unwrap_err();
        assert!(
            matches!(err, WireError::Truncated { section: "header", got_bytes, expected_bytes: 24 } if got_bytes == cut as u64),
            "{cut}: {err}"
        );
    }
    for cut in [HEADER_BYTES, HEADER_BYTES + 1, frame.len() - 1] {
        let err = read_frame(&mut Cursor::new(&frame[..cut]), &mut meta).unwrap_err();
        assert!(
            matches!(
                err,
                WireError::Truncated {
                    section: "meta",
                    ..
                }
            ),
            "{cut}: {err}"
        );
        assert!(err.to_string().starts_with("truncated frame"), "{err}");
    }
}

#[test]
fn batch_limit_is_enforced_on_encode_and_decode() {
    let at_limit = DirGet {
        keys: vec![[7u8; 16]; MAX_BATCH_ITEMS],
    };
    let mut out = Vec::new();
    encode_frame(&at_limit, 1, 0, &mut out).unwrap();
    let meta = aligned(&out[HEADER_BYTES..]);
    assert_eq!(
        decode_meta::<DirGet>(&meta).unwrap().keys.len(),
        MAX_BATCH_ITEMS
    );

    let over = DirGet {
        keys: vec![[7u8; 16]; MAX_BATCH_ITEMS + 1],
    };
    let mut out = vec![1, 2, 3];
    let err = encode_frame(&over, 1, 0, &mut out).unwrap_err();
    assert!(matches!(err, WireError::BatchTooLarge { items } if items == MAX_BATCH_ITEMS + 1));
    assert_eq!(
        err.to_string(),
        "batch of 65537 items exceeds 65536; split the batch"
    );
    assert_eq!(out, [1, 2, 3], "failed encode leaves the buffer as it was");

    // A peer that skips the check is caught on decode.
    let bytes = rkyv::to_bytes::<rkyv::rancor::BoxedError>(&over).unwrap();
    let err = decode_meta::<DirGet>(&bytes).unwrap_err();
    assert!(matches!(err, WireError::BatchTooLarge { .. }), "{err}");

    // Nested lists count too.
    let mut m = member("wide", 0);
    m.control_endpoints = vec![
        Endpoint {
            host: "h".into(),
            port: 1
        };
        MAX_BATCH_ITEMS + 1
    ];
    let reply = MembersReply {
        outcome: MembersOutcome::Referral as u8,
        registry_instance: 0,
        registry_changes: 0,
        members: vec![m],
        departed: Vec::new(),
        reason: String::new(),
    };
    let err = encode_frame(&reply, 1, 0, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, WireError::BatchTooLarge { .. }), "{err}");
    let bytes = rkyv::to_bytes::<rkyv::rancor::BoxedError>(&reply).unwrap();
    let err = decode_meta::<MembersReply>(&bytes).unwrap_err();
    assert!(matches!(err, WireError::BatchTooLarge { .. }), "{err}");
    // And so does the list of departures.
    let reply = MembersReply {
        outcome: MembersOutcome::Members as u8,
        registry_instance: 1,
        registry_changes: 1,
        members: Vec::new(),
        departed: vec![
            Deregister {
                node_id: "gone".into(),
                incarnation: 1,
            };
            MAX_BATCH_ITEMS + 1
        ],
        reason: String::new(),
    };
    let err = encode_frame(&reply, 1, 0, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, WireError::BatchTooLarge { .. }), "{err}");
    let bytes = rkyv::to_bytes::<rkyv::rancor::BoxedError>(&reply).unwrap();
    let err = decode_meta::<MembersReply>(&bytes).unwrap_err();
    assert!(matches!(err, WireError::BatchTooLarge { .. }), "{err}");
}

#[test]
fn oversized_meta_and_bulk_are_refused_on_encode() {
    let huge = ErrorReply {
        code: error_code::INTERNAL,
        message: "x".repeat(MAX_META_BYTES as usize + 1),
    };
    let mut out = vec![9];
    let err = encode_frame(&huge, 1, 0, &mut out).unwrap_err();
    assert!(matches!(err, WireError::MetaTooLarge { .. }), "{err}");
    assert_eq!(out, [9]);

    let (reply, _) = sample_read_reply();
    let err = encode_frame(&reply, 1, u64::from(MAX_BULK_BYTES) + 1, &mut out).unwrap_err();
    assert!(matches!(err, WireError::BulkTooLarge { .. }), "{err}");
    let err = encode_frame(&DirPutAck { stored: 1 }, 1, 1, &mut out).unwrap_err();
    assert!(matches!(err, WireError::UnexpectedBulk { .. }), "{err}");
    assert_eq!(out, [9]);
}

#[test]
fn garbage_meta_fails_validation() {
    // Random bytes as every kind's meta: rejected or (rarely) accepted, never a panic.
    let mut rng = StdRng::seed_from_u64(1);
    let mut invalid = 0;
    for _ in 0..200 {
        let len = rng.random_range(0..256usize);
        let mut bytes = vec![0u8; len];
        rng.fill(&mut bytes[..]);
        let meta = aligned(&bytes);
        for kind in Kind::ALL {
            let header = FrameHeader::new(kind, 0, len as u64, 0).unwrap();
            if let Err(e) = Message::decode(&header, &meta) {
                assert!(
                    matches!(
                        e,
                        WireError::InvalidArchive(_) | WireError::BatchTooLarge { .. }
                    ),
                    "{e}"
                );
                invalid += 1;
            }
        }
    }
    assert!(
        invalid > 200 * 12,
        "random bytes mostly rejected, got {invalid}"
    );

    // Targeted corruption of things bytecheck checks.
    let mut out = Vec::new();
    encode_frame(
        &HelloAck {
            node_id: "abcdefghijklmnop".into(),
        },
        0,
        0,
        &mut out,
    )
    .unwrap();
    let at = out
        .windows(16)
        .position(|w| w == b"abcdefghijklmnop")
        .unwrap();
    out[at + 5] = 0xff; // never valid in UTF-8
    let err = decode_meta::<HelloAck>(&aligned(&out[HEADER_BYTES..])).unwrap_err();
    assert!(matches!(err, WireError::InvalidArchive(_)), "{err}");
    assert!(
        err.to_string()
            .starts_with("archive failed validation: HelloAck"),
        "{err}"
    );
    assert!(err.to_string().len() > "archive failed validation: HelloAck (0x02) meta: ".len());

    // The Purpose tag: the one byte that differs between two purposes.
    let hello_meta = |purpose| {
        let mut out = Vec::new();
        let hello = Hello {
            protocol_version: 1,
            node_id: "n".into(),
            purpose,
        };
        encode_frame(&hello, 0, 0, &mut out).unwrap();
        aligned(&out[HEADER_BYTES..])
    };
    let (control, discovery) = (hello_meta(Purpose::Control), hello_meta(Purpose::Discovery));
    let diff: Vec<usize> = (0..control.len())
        .filter(|&i| control[i] != discovery[i])
        .collect();
    assert_eq!(diff.len(), 1);
    let mut m = aligned(&control);
    m[diff[0]] = 1;
    assert_eq!(
        Purpose::from(&decode_meta::<Hello>(&m).unwrap().purpose),
        Purpose::Data
    );
    for bad in [3u8, 0xee] {
        m[diff[0]] = bad;
        let err = decode_meta::<Hello>(&m).unwrap_err();
        assert!(
            matches!(err, WireError::InvalidArchive(_)),
            "purpose tag {bad}: {err}"
        );
    }

    let mut out = Vec::new();
    encode_frame(
        &DirPut {
            entries: vec![entry(1)],
        },
        0,
        0,
        &mut out,
    )
    .unwrap();
    let meta = aligned(&out[HEADER_BYTES..]);
    // `resident` is the byte at offset 46 of the 48-byte entry.
    let entry_at = meta.windows(16).position(|w| w == entry(1).key).unwrap();
    let mut m = aligned(&meta);
    assert!(decode_meta::<DirPut>(&m).unwrap().entries[0].resident);
    m[entry_at + 46] = 0;
    assert!(!decode_meta::<DirPut>(&m).unwrap().entries[0].resident);
    m[entry_at + 46] = 2;
    let err = decode_meta::<DirPut>(&m).unwrap_err();
    assert!(
        matches!(err, WireError::InvalidArchive(_)),
        "a bool of 2 is rejected: {err}"
    );
}

#[test]
fn misaligned_meta_is_refused() {
    let mut out = Vec::new();
    encode_frame(&DirPutAck { stored: 3 }, 0, 0, &mut out).unwrap();
    let mut buf: AlignedVec = AlignedVec::new();
    buf.push(0);
    buf.extend_from_slice(&out[HEADER_BYTES..]);
    let err = decode_meta::<DirPutAck>(&buf[1..]).unwrap_err();
    assert!(matches!(err, WireError::MisalignedMeta), "{err}");
    assert_eq!(
        decode_meta::<DirPutAck>(&aligned(&buf[1..]))
            .unwrap()
            .stored,
        3
    );
}

#[test]
fn kind_mismatch_is_reported() {
    let bytes = encode(&samples()[0], 1);
    let mut meta = AlignedVec::new();
    let header = read_frame(&mut Cursor::new(&bytes[..]), &mut meta).unwrap();
    let err = header.expect_kind(Kind::HelloAck).unwrap_err();
    assert_eq!(
        err.to_string(),
        "expected a HelloAck (0x02) frame, got Hello (0x01)"
    );
    assert!(err.stream_in_sync());
}

/// Runs one received byte string through everything a receiver would do.
/// Returns (frames accepted, frames rejected after a good header, header or
/// stream errors).
fn receive_all(bytes: &[u8], meta: &mut AlignedVec) -> (u32, u32, u32) {
    let mut cur = Cursor::new(bytes);
    let (mut accepted, mut rejected) = (0, 0);
    for _ in 0..8 {
        let header = match read_frame(&mut cur, meta) {
            Ok(h) => h,
            Err(WireError::Closed) => return (accepted, rejected, 0),
            Err(e) => {
                assert!(!e.stream_in_sync(), "{e}");
                return (accepted, rejected, 1);
            }
        };
        match Message::decode(&header, meta) {
            Ok(Message::DataReadReply(reply)) => {
                accepted += 1;
                let archived = decode_meta::<DataReadReply>(meta).unwrap();
                let n = reply.status.len();
                let items = vec![
                    ReadItem {
                        offset: 0,
                        generation: 0,
                        len: PAGE_BYTES as u32
                    };
                    n
                ];
                let mut pages = vec![[0u8; PAGE_BYTES]; n];
                let mut dests: Vec<BulkDest> =
                    pages.iter_mut().map(|p| BulkDest::from_slice(p)).collect();
                match BulkPlan::new(&header, archived, &items, &mut dests) {
                    Ok(plan) => {
                        if plan.read_from(&mut cur).is_err() {
                            return (accepted, rejected, 1);
                        }
                    }
                    Err(e) => {
                        assert!(e.stream_in_sync());
                        if discard_bulk(&mut cur, header.bulk_len).is_err() {
                            return (accepted, rejected, 1);
                        }
                    }
                }
            }
            Ok(_) => accepted += 1,
            Err(e) => {
                assert!(e.stream_in_sync(), "{e}");
                rejected += 1;
                if discard_bulk(&mut cur, header.bulk_len).is_err() {
                    return (accepted, rejected, 1);
                }
            }
        }
    }
    (accepted, rejected, 0)
}

#[test]
fn fuzzed_frames_never_panic() {
    let corpus: Vec<Vec<u8>> = samples()
        .iter()
        .enumerate()
        .map(|(i, m)| encode(m, i as u64))
        .collect();
    let mut rng = StdRng::seed_from_u64(0x5eed_cafe);
    let mut meta = AlignedVec::new();
    let (mut accepted, mut rejected, mut broken) = (0u32, 0u32, 0u32);
    for round in 0..20_000u32 {
        let mut bytes = corpus[rng.random_range(0..corpus.len())].clone();
        match round % 6 {
            // Bit flips anywhere.
            0 => {
                for _ in 0..rng.random_range(1..=8) {
                    let at = rng.random_range(0..bytes.len());
                    bytes[at] ^= 1 << rng.random_range(0..8);
                }
            }
            // Bit flips in the meta only: the header stays valid, so
            // validation of the archive is what is exercised.
            1 => {
                if bytes.len() > HEADER_BYTES {
                    for _ in 0..rng.random_range(1..=4) {
                        let at = rng.random_range(HEADER_BYTES..bytes.len());
                        bytes[at] ^= 1 << rng.random_range(0..8);
                    }
                }
            }
            // A random stretch of the meta overwritten with random bytes.
            2 => {
                if bytes.len() > HEADER_BYTES {
                    let from = rng.random_range(HEADER_BYTES..bytes.len());
                    let to = rng.random_range(from..=bytes.len());
                    rng.fill(&mut bytes[from..to]);
                }
            }
            // Truncated anywhere.
            3 => bytes.truncate(rng.random_range(0..bytes.len())),
            // A valid header of a random kind over random meta.
            4 => {
                let kind = Kind::ALL[rng.random_range(0..Kind::ALL.len())];
                let len = rng.random_range(0..200usize);
                let mut out = FrameHeader::new(kind, 1, len as u64, 0)
                    .unwrap()
                    .to_bytes()
                    .to_vec();
                out.resize(HEADER_BYTES + len, 0);
                rng.fill(&mut out[HEADER_BYTES..]);
                bytes = out;
            }
            // Two frames back to back, the second one mutated.
            _ => {
                let mut second = corpus[rng.random_range(0..corpus.len())].clone();
                let at = rng.random_range(0..second.len());
                second[at] = rng.random();
                bytes.extend_from_slice(&second);
            }
        }
        let (a, r, b) = receive_all(&bytes, &mut meta);
        accepted += a;
        rejected += r;
        broken += b;
    }
    // Every path was exercised: good frames, frames whose archive was refused,
    // and streams that broke in the header or mid-section.
    assert!(accepted > 1000, "accepted {accepted}");
    assert!(rejected > 1000, "rejected {rejected}");
    assert!(broken > 1000, "broken {broken}");
}

#[test]
fn bulk_plan_reads_ok_items_into_their_destinations() {
    let (reply, bulk) = sample_read_reply();
    let mut stream = Vec::new();
    encode_frame(&reply, 3, bulk.len() as u64, &mut stream).unwrap();
    stream.extend_from_slice(&bulk);
    stream.extend_from_slice(b"next");
    let mut cur = Cursor::new(&stream[..]);
    let mut meta = AlignedVec::new();
    let header = read_frame(&mut cur, &mut meta).unwrap();
    let archived = decode_meta::<DataReadReply>(&meta).unwrap();

    let mut page0 = [0u8; PAGE_BYTES];
    let mut page1 = [0x55u8; PAGE_BYTES];
    let mut page2 = vec![0u8; PAGE_BYTES];
    let mut dests = [
        BulkDest::from_slice(&mut page0),
        BulkDest::from_slice(&mut page1),
        // SAFETY: page2 outlives the plan and is not touched while it lives.
        unsafe { BulkDest::from_raw(page2.as_mut_ptr(), page2.len()) },
    ];
    let plan = BulkPlan::new(&header, archived, &sample_read_items(), &mut dests).unwrap();
    assert_eq!(plan.bulk_len_bytes(), 2 * PAGE_BYTES as u64);
    assert_eq!(plan.status(1), Some(ReadStatus::StaleGeneration));
    assert_eq!(plan.status(3), None);
    let segments: Vec<BulkSegment> = plan.segments().collect();
    assert_eq!(
        segments,
        [
            BulkSegment {
                item: 0,
                bulk_offset_bytes: 0,
                len_bytes: PAGE_BYTES
            },
            BulkSegment {
                item: 2,
                bulk_offset_bytes: PAGE_BYTES as u64,
                len_bytes: PAGE_BYTES
            },
        ]
    );
    plan.read_from(&mut cur).unwrap();
    assert_eq!(page0, [0xA0; PAGE_BYTES]);
    assert_eq!(
        page1, [0x55; PAGE_BYTES],
        "a non-OK item's destination is untouched"
    );
    assert_eq!(page2, [0xC0; PAGE_BYTES]);
    assert_eq!(&stream[cur.position() as usize..], b"next");
}

/// Receives a DataReadReply whose header says `bulk_len` and returns what
/// BulkPlan says, checking that no bulk byte was consumed on rejection.
fn plan_for(
    reply: &DataReadReply,
    bulk_len: u64,
    items: &[ReadItem],
    dest_lens: &[usize],
) -> Result<(), WireError> {
    let mut stream = Vec::new();
    encode_frame(reply, 1, bulk_len, &mut stream).unwrap();
    let frame_end = stream.len();
    stream.resize(frame_end + bulk_len as usize, 0xEE);
    let mut cur = Cursor::new(&stream[..]);
    let mut meta = AlignedVec::new();
    let header = read_frame(&mut cur, &mut meta).unwrap();
    let archived = decode_meta::<DataReadReply>(&meta).unwrap();
    let mut bufs: Vec<Vec<u8>> = dest_lens.iter().map(|&n| vec![0u8; n]).collect();
    let mut dests: Vec<BulkDest> = bufs.iter_mut().map(|b| BulkDest::from_slice(b)).collect();
    match BulkPlan::new(&header, archived, items, &mut dests) {
        Ok(plan) => plan.read_from(&mut cur),
        Err(e) => {
            assert_eq!(
                cur.position() as usize,
                frame_end,
                "rejected before reading bulk"
            );
            assert!(e.stream_in_sync());
            discard_bulk(&mut cur, header.bulk_len).unwrap();
            assert_eq!(cur.position() as usize, stream.len());
            Err(e)
        }
    }
}

#[test]
fn bulk_plan_rejects_lying_replies() {
    let (reply, bulk) = sample_read_reply();
    let items = sample_read_items();
    let lens = [PAGE_BYTES; 3];
    plan_for(&reply, bulk.len() as u64, &items, &lens).unwrap();

    for lie in [
        0,
        bulk.len() as u64 - 1,
        bulk.len() as u64 + 1,
        3 * PAGE_BYTES as u64,
    ] {
        let err = plan_for(&reply, lie, &items, &lens).unwrap_err();
        assert!(
            matches!(err, WireError::BulkLenMismatch { bulk_len_bytes, expected_bytes: 16 } if bulk_len_bytes == lie),
            "{lie}: {err}"
        );
    }

    // An OK item longer than its destination would overflow it.
    let err = plan_for(
        &reply,
        16,
        &items,
        &[PAGE_BYTES - 1, PAGE_BYTES, PAGE_BYTES],
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            WireError::DestinationLenMismatch {
                item: 0,
                item_len_bytes: 8,
                dest_len_bytes: 7
            }
        ),
        "{err}"
    );
    // ... and shorter is refused too (it would leave stale bytes).
    let err = plan_for(
        &reply,
        16,
        &items,
        &[PAGE_BYTES, PAGE_BYTES, PAGE_BYTES + 1],
    )
    .unwrap_err();
    assert!(
        matches!(err, WireError::DestinationLenMismatch { item: 2, .. }),
        "{err}"
    );
    // A non-OK item's destination may differ: nothing is written there.
    plan_for(&reply, 16, &items, &[PAGE_BYTES, 0, PAGE_BYTES]).unwrap();

    // Status count differs from the request.
    let short = DataReadReply { status: vec![0, 0] };
    let err = plan_for(&short, 16, &items, &lens).unwrap_err();
    assert!(
        matches!(
            err,
            WireError::ItemCountMismatch {
                statuses: 2,
                items: 3,
                destinations: 3
            }
        ),
        "{err}"
    );
    let err = plan_for(&reply, 16, &items, &lens[..2]).unwrap_err();
    assert!(
        matches!(
            err,
            WireError::ItemCountMismatch {
                destinations: 2,
                ..
            }
        ),
        "{err}"
    );

    // Unknown status codes are not guessed at.
    let odd = DataReadReply {
        status: vec![0, 200, 0],
    };
    let err = plan_for(&odd, 16, &items, &lens).unwrap_err();
    assert!(
        matches!(err, WireError::UnknownStatus { item: 1, code: 200 }),
        "{err}"
    );
}

#[test]
fn bulk_plan_refuses_other_kinds_and_reports_short_bulk() {
    let (reply, bulk) = sample_read_reply();
    let mut stream = Vec::new();
    encode_frame(&reply, 1, bulk.len() as u64, &mut stream).unwrap();
    stream.extend_from_slice(&bulk[..5]); // the peer died mid-bulk
    let mut cur = Cursor::new(&stream[..]);
    let mut meta = AlignedVec::new();
    let header = read_frame(&mut cur, &mut meta).unwrap();
    let archived = decode_meta::<DataReadReply>(&meta).unwrap();
    let mut bufs = [[0u8; PAGE_BYTES]; 3];
    let mut dests: Vec<BulkDest> = bufs.iter_mut().map(|b| BulkDest::from_slice(b)).collect();

    let wrong = FrameHeader {
        kind: Kind::DataRead,
        ..header
    };
    let err = BulkPlan::new(&wrong, archived, &sample_read_items(), &mut dests).unwrap_err();
    assert!(matches!(err, WireError::KindMismatch { .. }), "{err}");

    let plan = BulkPlan::new(&header, archived, &sample_read_items(), &mut dests).unwrap();
    let err = plan.read_from(&mut cur).unwrap_err();
    assert!(
        matches!(
            err,
            WireError::Truncated {
                section: "bulk",
                got_bytes: 5,
                expected_bytes: 16
            }
        ),
        "{err}"
    );
}

#[test]
fn pipelined_frames_are_read_in_order() {
    let (reply, bulk) = sample_read_reply();
    let sequence: Vec<(u64, Message)> = vec![
        (11, samples()[0].clone()),
        (12, samples()[10].clone()),
        (13, reply.into()),
        (14, samples()[13].clone()),
        (u64::MAX, MembersRequest.into()),
    ];
    let mut stream = Vec::new();
    for (id, msg) in &sequence {
        let b = bulk_of(msg);
        msg.encode(*id, b.len() as u64, &mut stream).unwrap();
        stream.extend_from_slice(&b);
    }
    let mut cur = Cursor::new(&stream[..]);
    let mut meta = AlignedVec::new();
    for (id, msg) in &sequence {
        let header = read_frame(&mut cur, &mut meta).unwrap();
        assert_eq!(header.request_id, *id);
        assert_eq!(Message::decode(&header, &meta).unwrap(), *msg);
        if header.kind == Kind::DataReadReply {
            let archived = decode_meta::<DataReadReply>(&meta).unwrap();
            let mut pages = [[0u8; PAGE_BYTES]; 3];
            let mut dests: Vec<BulkDest> =
                pages.iter_mut().map(|p| BulkDest::from_slice(p)).collect();
            BulkPlan::new(&header, archived, &sample_read_items(), &mut dests)
                .unwrap()
                .read_from(&mut cur)
                .unwrap();
            assert_eq!(pages.concat(), [&bulk[..8], &[0; 8], &bulk[8..]].concat());
        }
    }
    assert!(matches!(
        read_frame(&mut cur, &mut meta),
        Err(WireError::Closed)
    ));
}

/// A writer that takes at most `chunk` bytes per call, across slices, and
/// counts vectored calls.
struct Dribble {
    out: Vec<u8>,
    chunk: usize,
    vectored_calls: usize,
    interrupt_next: bool,
}

impl Write for Dribble {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.chunk);
        self.out.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        if std::mem::take(&mut self.interrupt_next) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        self.interrupt_next = true;
        self.vectored_calls += 1;
        let mut left = self.chunk;
        for b in bufs {
            let n = b.len().min(left);
            self.out.extend_from_slice(&b[..n]);
            left -= n;
            if left == 0 {
                break;
            }
        }
        Ok(self.chunk - left)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn write_frame_gathers_bulk_through_short_writes() {
    let (reply, bulk) = sample_read_reply();
    let mut expected = Vec::new();
    encode_frame(&reply, 8, bulk.len() as u64, &mut expected).unwrap();
    expected.extend_from_slice(&bulk);

    // 200 slices (more than one vectored batch), some empty.
    let many: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let mut slices: Vec<&[u8]> = many.chunks(15).collect();
    slices.insert(3, &[]);
    slices.push(&[]);
    let many_reply = DataReadReply {
        status: vec![ReadStatus::Ok.code()],
    };
    let mut expected_many = Vec::new();
    encode_frame(&many_reply, 9, many.len() as u64, &mut expected_many).unwrap();
    expected_many.extend_from_slice(&many);

    for chunk in [1, 5, 24, 1000, usize::MAX] {
        let mut w = Dribble {
            out: Vec::new(),
            chunk,
            vectored_calls: 0,
            interrupt_next: false,
        };
        let mut scratch = vec![0xFF; 3];
        let h = write_frame(&mut w, &reply, 8, &[&bulk[..8], &bulk[8..]], &mut scratch).unwrap();
        assert_eq!(h.bulk_len as usize, bulk.len());
        let h = write_frame(&mut w, &many_reply, 9, &slices, &mut scratch).unwrap();
        assert_eq!(h.bulk_len as usize, many.len());
        assert_eq!(
            w.out,
            [&expected[..], &expected_many[..]].concat(),
            "chunk {chunk}"
        );
        if chunk == usize::MAX {
            // 1 call for the first frame, ceil(203 / 64) for the second.
            assert_eq!(w.vectored_calls, 1 + 4);
        }
    }
}

#[test]
fn write_frame_fails_on_a_closed_writer() {
    let mut w: &mut [u8] = &mut [0u8; 10];
    let err = write_frame(&mut w, &DirPutAck { stored: 1 }, 1, &[], &mut Vec::new()).unwrap_err();
    assert!(
        matches!(err, WireError::Io(ref e) if e.kind() == io::ErrorKind::WriteZero),
        "{err}"
    );
}

#[test]
fn errors_map_to_reply_codes() {
    assert_eq!(
        WireError::UnknownKind(0x50).code(),
        error_code::UNKNOWN_KIND
    );
    assert_eq!(
        WireError::BatchTooLarge { items: 1 << 20 }.code(),
        error_code::TOO_LARGE
    );
    assert_eq!(
        WireError::InvalidArchive("x".into()).code(),
        error_code::BAD_FRAME
    );
    assert!(!WireError::BadMagic {
        found: 0,
        expected: MAGIC
    }
    .stream_in_sync());
}
