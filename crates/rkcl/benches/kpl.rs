//! De-aggregation against its floor, the MD5 of the same bytes.
//!
//! The input is a realistic mix: KPL aggregates of the default 51,200 bytes
//! holding user records of 100 to 1,000 bytes with 20-character partition
//! keys (a tenth with explicit hash keys), small aggregates of a few records,
//! and plain records. Goal: de-aggregation takes at most 1.25 times the MD5.
//!
//! Run with `cargo bench -p rkcl --bench kpl`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_main};
use md5::{Digest, Md5};
use rkcl::{
    kpl::{Aggregator, Deaggregator, Decoded, HashRangePolicy},
    model::{HashKey, HashKeyRange},
    record::ProducerRecord,
};

/// A deterministic pseudo-random sequence, so every run sees the same input.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn realistic_mix() -> Vec<Bytes> {
    let mut rng = Lcg(42);
    let mut records = Vec::new();
    let user_record = |rng: &mut Lcg| ProducerRecord {
        partition_key: format!("customer-{:011}", rng.below(100_000)),
        explicit_hash_key: (rng.below(10) == 0).then(|| (u128::from(rng.next()) << 64).to_string()),
        data: Bytes::from(vec![b'x'; 100 + rng.below(900) as usize]),
    };
    // 40 full aggregates.
    let mut aggregator = Aggregator::new();
    while records.len() < 40 {
        if let Some(full) = aggregator.add(user_record(&mut rng)).unwrap() {
            records.push(full.data);
        }
    }
    // 100 small aggregates of 2 to 10 records.
    for _ in 0..100 {
        let mut small = Aggregator::new();
        for _ in 0..2 + rng.below(9) {
            assert!(small.add(user_record(&mut rng)).unwrap().is_none());
        }
        records.extend(small.flush().map(|a| a.data));
    }
    // 200 plain records.
    for _ in 0..200 {
        records.push(Bytes::from(vec![b'{'; 200 + rng.below(800) as usize]));
    }
    records
}

fn bench(c: &mut Criterion) {
    let records = realistic_mix();
    let bytes: usize = records.iter().map(Bytes::len).sum();
    let mut group = c.benchmark_group("kpl");
    group.throughput(Throughput::Bytes(bytes as u64));

    group.bench_function("md5_only", |b| {
        b.iter(|| {
            for record in &records {
                black_box(Md5::digest(black_box(record)));
            }
        })
    });
    group.bench_function("deaggregate", |b| {
        let mut deaggregator = Deaggregator::new();
        b.iter(|| {
            for record in &records {
                black_box(deaggregator.decode(black_box(record), None));
            }
        })
    });
    let half = HashKeyRange::new(HashKey::MIN, HashKey::from_u128(u128::MAX / 2)).unwrap();
    group.bench_function("deaggregate_with_shard_range", |b| {
        let mut deaggregator = Deaggregator::for_hash_range(half, HashRangePolicy::Off);
        b.iter(|| {
            for record in &records {
                let decoded = deaggregator.decode(black_box(record), None);
                debug_assert!(!matches!(decoded, Decoded::Dropped { .. }));
                black_box(decoded);
            }
        })
    });
    group.finish();
}

mod group {
    #![allow(missing_docs)]
    criterion::criterion_group!(benches, super::bench);
}
criterion_main!(group::benches);
