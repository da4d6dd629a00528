//! Record counting from batch headers, without decompressing.
//!
//! A v2 record batch (magic 2) starts with baseOffset (i64), batchLength
//! (i32, bytes after this field), partitionLeaderEpoch (i32), magic (i8 at
//! offset 16), crc, attributes, lastOffsetDelta, timestamps, producer
//! fields, and the record count (i32 at offset 57). The next batch starts
//! 12 + batchLength bytes later. Legacy message sets (magic 0 and 1) are
//! offset (i64), messageSize (i32), message: each entry counts as one
//! record (a compressed legacy wrapper counts as one, since its inner
//! messages are compressed). A partial batch at the end (Fetch responses
//! may end with one) is not counted.

/// Records and bytes found in a records field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordCount {
    /// Records (sum of the batches' record counts).
    pub records: u64,
    /// Bytes of the records field (batches with their headers).
    pub bytes: u64,
}

impl std::ops::AddAssign for RecordCount {
    fn add_assign(&mut self, o: RecordCount) {
        self.records += o.records;
        self.bytes += o.bytes;
    }
}

const LOG_OVERHEAD: usize = 12;
const MAGIC_OFFSET: usize = 16;
const RECORDS_COUNT_OFFSET: usize = 57;

/// Counts the records in a records field (a sequence of batches).
pub fn count_records(records: &[u8]) -> RecordCount {
    let mut count = RecordCount {
        records: 0,
        bytes: records.len() as u64,
    };
    let mut pos = 0usize;
    while records.len() - pos >= LOG_OVERHEAD {
        let b = &records[pos..];
        let length = i32::from_be_bytes([b[8], b[9], b[10], b[11]]);
        if length < 0 {
            break;
        }
        let total = LOG_OVERHEAD + length as usize;
        if b.len() < total || b.len() <= MAGIC_OFFSET {
            break;
        }
        match b[MAGIC_OFFSET] {
            2 => {
                if total < RECORDS_COUNT_OFFSET + 4 {
                    break;
                }
                let n = i32::from_be_bytes([
                    b[RECORDS_COUNT_OFFSET],
                    b[RECORDS_COUNT_OFFSET + 1],
                    b[RECORDS_COUNT_OFFSET + 2],
                    b[RECORDS_COUNT_OFFSET + 3],
                ]);
                count.records += n.max(0) as u64;
            }
            0 | 1 => count.records += 1,
            _ => break,
        }
        pos += total;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    fn batch(n: usize, value_size: usize) -> Bytes {
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: -1,
                timestamp: 0,
                key: None,
                value: Some(Bytes::from(vec![b'v'; value_size])),
                headers: Default::default(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .unwrap();
        buf.freeze()
    }

    #[test]
    fn counts_v2_batches() {
        let mut all = BytesMut::new();
        all.extend_from_slice(&batch(3, 10));
        all.extend_from_slice(&batch(5, 100));
        let c = count_records(&all);
        assert_eq!(c.records, 8);
        assert_eq!(c.bytes, all.len() as u64);
    }

    #[test]
    fn partial_trailing_batch_is_not_counted() {
        let mut all = BytesMut::new();
        all.extend_from_slice(&batch(3, 10));
        // (kafka-protocol's encoder writes one batch per record here)
        let second = batch(1, 100);
        all.extend_from_slice(&second[..second.len() - 7]);
        assert_eq!(count_records(&all).records, 3);
    }

    #[test]
    fn legacy_messages_count_one_each() {
        // offset, size, then a v1 message: crc, magic 1, attributes, timestamp, key, value.
        let mut m = Vec::new();
        for _ in 0..2 {
            let msg: Vec<u8> = [0, 0, 0, 0, 1, 0]
                .into_iter()
                .chain([0u8; 8])
                .chain([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, b'x'])
                .collect();
            m.extend_from_slice(&0i64.to_be_bytes());
            m.extend_from_slice(&(msg.len() as i32).to_be_bytes());
            m.extend_from_slice(&msg);
        }
        assert_eq!(count_records(&m).records, 2);
    }

    #[test]
    fn garbage_is_harmless() {
        assert_eq!(count_records(&[]).records, 0);
        assert_eq!(count_records(&[0xff; 100]).records, 0);
        let mut b = vec![0u8; 70];
        b[11] = 58;
        b[16] = 2;
        b[60] = 9;
        assert_eq!(count_records(&b).records, 9);
    }
}
