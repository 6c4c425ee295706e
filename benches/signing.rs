//! What signed transfers cost a node: one ed25519 signature check per transfer it takes from a
//! client (and benmoctl's signing, per transfer it sends). `cargo bench -p benmo --bench signing`.

use benmo_paxos::{Hash, Transfer, TransferId};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ed25519_dalek::SigningKey;

fn transfer(index: u64) -> Transfer {
    Transfer {
        id: TransferId::new(format!("bench-{index}")).expect("valid id"),
        from: 1,
        to: 2,
        amount: 1,
        signature: None,
    }
}

fn signing(criterion: &mut Criterion) {
    let key = SigningKey::from_bytes(&[7; 32]);
    let public = key.verifying_key();
    let genesis = Hash([3; 32]);
    let mut signed = transfer(1);
    benmo::signing::sign(&mut signed, &key, &genesis);

    let mut group = criterion.benchmark_group("transfer signature");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sign", |bencher| {
        let mut unsigned = transfer(2);
        bencher.iter(|| benmo::signing::sign(&mut unsigned, &key, &genesis));
    });
    group.bench_function("verify", |bencher| {
        bencher.iter(|| {
            benmo::signing::verify(&signed, Some(&public), &genesis).expect("a good signature")
        });
    });
    group.finish();
}

criterion_group!(benches, signing);
criterion_main!(benches);
