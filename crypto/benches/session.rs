//! Micro-benchmarks of one WireGuard session: encapsulate and decapsulate of full-size packets,
//! and key parsing. Two sessions are handshaken against each other in memory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ferry_crypto::keys::{PrivateKey, PublicKey};
use ferry_crypto::session::{Output, Session};

const MTU: usize = 1420;
const PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A valid IPv4/UDP packet of `len` bytes (boringtun checks the inner header on decapsulation).
fn inner_packet(len: usize) -> Vec<u8> {
    let mut p = vec![0xabu8; len];
    p[0] = 0x45;
    p[1] = 0;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[4..8].copy_from_slice(&[0, 0, 0x40, 0]);
    p[8] = 64;
    p[9] = 17;
    p[10..12].copy_from_slice(&[0, 0]);
    p[12..16].copy_from_slice(&[10, 0, 0, 2]);
    p[16..20].copy_from_slice(&[10, 0, 0, 1]);
    p
}

/// Two sessions with a completed handshake: `(initiator, responder)`.
fn handshaken_pair() -> (Session, Session) {
    let ka = PrivateKey::generate();
    let kb = PrivateKey::generate();
    let mut a = Session::new(&ka, kb.public_key(), None, None, 1);
    let mut b = Session::new(&kb, ka.public_key(), None, None, 2);
    let mut buf = vec![0u8; Session::buffer_len(MTU)];
    let mut out = vec![0u8; Session::buffer_len(MTU)];
    let n = a.force_handshake(&mut buf).expect("handshake initiation");
    let init = buf[..n].to_vec();
    let mut to_a = Vec::new();
    b.handle_datagram(PEER, &init, &mut out, |o| {
        if let Output::Network(d) = o {
            to_a.push(d.to_vec());
        }
    })
    .expect("responder accepts initiation");
    let mut to_b = Vec::new();
    for d in &to_a {
        a.handle_datagram(PEER, d, &mut out, |o| {
            if let Output::Network(d) = o {
                to_b.push(d.to_vec());
            }
        })
        .expect("initiator accepts response");
    }
    // One data packet confirms the session on the responder side.
    let pkt = inner_packet(MTU);
    let n = a
        .encapsulate(&pkt, &mut buf)
        .unwrap()
        .expect("session established");
    to_b.push(buf[..n].to_vec());
    for d in &to_b {
        let _ = b.handle_datagram(PEER, d, &mut out, |_| {});
    }
    (a, b)
}

fn bench_session(c: &mut Criterion) {
    let mut g = c.benchmark_group("session");
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(500));
    g.sample_size(20);
    g.throughput(Throughput::Bytes(MTU as u64));

    let pkt = inner_packet(MTU);
    {
        let (mut a, _b) = handshaken_pair();
        let mut dst = vec![0u8; Session::buffer_len(MTU)];
        g.bench_function("encapsulate_1420", |bch| {
            bch.iter(|| {
                let n = a.encapsulate(black_box(&pkt), &mut dst).unwrap();
                black_box(n)
            })
        });
    }
    {
        let (mut a, mut b) = handshaken_pair();
        let mut enc = vec![0u8; Session::buffer_len(MTU)];
        let mut dst = vec![0u8; Session::buffer_len(MTU)];
        g.bench_function("decapsulate_1420", |bch| {
            bch.iter_batched_ref(
                || {
                    let n = a.encapsulate(&pkt, &mut enc).unwrap().unwrap();
                    enc[..n].to_vec()
                },
                |datagram| {
                    let mut got = 0usize;
                    b.handle_datagram(PEER, datagram, &mut dst, |o| {
                        if let Output::Tunnel(p) = o {
                            got = p.len();
                        }
                    })
                    .unwrap();
                    assert_eq!(got, MTU);
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();

    let mut g = c.benchmark_group("keys");
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(500));
    g.sample_size(20);
    let private = PrivateKey::generate();
    let private_b64 = private.to_base64();
    let public_b64 = private.public_key().to_string();
    g.bench_function("parse_private", |bch| {
        bch.iter(|| black_box(&private_b64).parse::<PrivateKey>().unwrap())
    });
    g.bench_function("parse_public", |bch| {
        bch.iter(|| black_box(&public_b64).parse::<PublicKey>().unwrap())
    });
    g.bench_function("derive_public", |bch| {
        bch.iter(|| black_box(&private).public_key())
    });
    g.finish();
}

criterion_group!(benches, bench_session);
criterion_main!(benches);
