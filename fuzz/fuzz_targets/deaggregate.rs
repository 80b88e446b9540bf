//! De-aggregation of arbitrary bytes: never panics, never loses a record.
//!
//! The first byte picks the hash-range policy, a range, and whether the rest
//! is framed as an aggregate (magic, the bytes, their MD5) so that the
//! protobuf parser sees it; the rest is the record's data. Whatever the input, the result is a pass-through of the
//! whole input, a non-empty list of user records whose data lies inside the
//! input, or a counted drop.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rkcl::{kpl::{Decoded, Deaggregator, HashRangePolicy}, model::{HashKey, HashKeyRange}};

fuzz_target!(|input: &[u8]| {
    let Some((&selector, data)) = input.split_first() else {
        return;
    };
    let data = if selector & 4 == 0 {
        let mut framed = rkcl::kpl::MAGIC.to_vec();
        framed.extend_from_slice(data);
        framed.extend_from_slice(&{ use md5::Digest; md5::Md5::digest(data) });
        Bytes::from(framed)
    } else {
        Bytes::copy_from_slice(data)
    };
    let policy = if selector & 1 == 0 {
        HashRangePolicy::DropAggregate
    } else {
        HashRangePolicy::Off
    };
    let end = HashKey::from_u128(u128::MAX >> (selector >> 3));
    let mut deaggregator = match HashKeyRange::new(HashKey::MIN, end) {
        Ok(range) if selector & 2 == 0 => Deaggregator::for_hash_range(range, policy),
        _ => Deaggregator::new(),
    };
    match deaggregator.decode(&data, None) {
        Decoded::PassThrough(_) => assert_eq!(deaggregator.stats().user_records, 1),
        Decoded::Aggregate(records) => {
            assert!(!records.is_empty());
            let total: usize = records.iter().map(|r| r.data.len()).sum();
            assert!(total <= data.len());
            for (i, record) in records.iter().enumerate() {
                assert_eq!(record.sub_sequence_number, Some(i as u64));
            }
        }
        Decoded::Dropped { sub_records, outside_range } => {
            assert!(outside_range >= 1 && outside_range <= sub_records);
            assert_eq!(deaggregator.stats().sub_records_dropped, sub_records as u64);
        }
    }
});
