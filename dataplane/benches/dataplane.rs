//! Micro-benchmarks of the dataplane's pure parts: forward spec parsing and outbox churn.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_dataplane::outbox::Outbox;
use ferry_dataplane::spec::{Protocol, parse_specs};

const DATAGRAM: usize = 1452;

fn bench_specs(c: &mut Criterion) {
    let mut g = c.benchmark_group("spec");
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(500));
    g.sample_size(20);
    g.bench_function("parse_simple", |b| {
        b.iter(|| parse_specs(Protocol::Tcp, black_box(&["8080"])).unwrap())
    });
    g.bench_function("parse_mixed_list", |b| {
        let values = [
            "8080:80, 127.0.0.1:9000-9009:19000-19009",
            "[::1]:5432",
            "3000-3003",
        ];
        b.iter(|| parse_specs(Protocol::Tcp, black_box(&values)).unwrap())
    });
    g.bench_function("parse_range_1000", |b| {
        b.iter(|| parse_specs(Protocol::Udp, black_box(&["20000-20999:30000-30999"])).unwrap())
    });
    g.finish();
}

fn bench_outbox(c: &mut Criterion) {
    let mut g = c.benchmark_group("outbox");
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(500));
    g.sample_size(20);
    const PER_ROUND: usize = 64;
    g.throughput(Throughput::Bytes((PER_ROUND * DATAGRAM) as u64));
    let payload = vec![0x5au8; DATAGRAM];
    let mut outbox = Outbox::new(16);
    g.bench_function("push_pop_recycle_64x1452", |b| {
        b.iter(|| {
            let mut pushed = 0;
            while pushed < PER_ROUND {
                if !outbox.has_room(DATAGRAM) {
                    break;
                }
                outbox.push_with(DATAGRAM, |dst| {
                    dst[..DATAGRAM].copy_from_slice(&payload);
                    Some(DATAGRAM)
                });
                pushed += 1;
            }
            let mut sent = 0usize;
            while let Some(batch) = outbox.pop() {
                sent += batch.count();
                black_box(batch.bytes());
                outbox.recycle(batch);
            }
            assert_eq!(sent, pushed);
            sent
        })
    });
    g.finish();
}

criterion_group!(benches, bench_specs, bench_outbox);
criterion_main!(benches);
