//! Policy engine costs: compile and decide for policies of 10, 1,000 and 10,000 rules, plus the
//! p99 of single decisions (the budget is about one request's tail, which a mean hides).
//!
//! cargo bench -p token-broker-policy --bench decide

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use token_broker_policy::{Claims, Policy, parse};

const SIZES: [usize; 3] = [10, 1_000, 10_000];

/// One role with `rules` rules, one per project, shaped like real ones (ids pinned, refs globbed).
fn policy_text(rules: usize) -> String {
    let mut text = String::from(
        "audience = \"https://token-broker.example.com\"\n[[issuer]]\nurl = \"https://gitlab.example.com\"\n\n\
         [role.deploy]\narn = \"arn:aws:iam::123456789012:role/deploy\"\nsession_tags = [\"project_id\"]\n",
    );
    for i in 0..rules {
        text.push_str(&format!(
            "\n[[role.deploy.allow]]\nproject_id = \"{}\"\nref_type = \"branch\"\nref = [\"main\", \"release/*\"]\nref_protected = \"true\"\nenvironment = [\"production\", \"staging-*\"]\n",
            10_000 + i
        ));
    }
    text
}

fn compile(text: &str) -> Policy {
    parse(Path::new("bench.toml"), text, &|_| Err("no files".into()))
        .expect("bench policy compiles")
}

/// The job of the last rule's project (the worst case for a scan), or of no rule's.
fn job(project_id: usize) -> Claims {
    let project_id = project_id.to_string();
    Claims::from_pairs(
        "https://gitlab.example.com",
        [
            ("project_id", project_id.as_str()),
            ("namespace_id", "72"),
            ("ref", "release/1.2"),
            ("ref_type", "branch"),
            ("ref_protected", "true"),
            ("environment", "staging-eu"),
        ],
    )
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    for rules in SIZES {
        let text = policy_text(rules);
        group.bench_with_input(BenchmarkId::from_parameter(rules), &text, |b, text| {
            b.iter(|| compile(black_box(text)))
        });
    }
    group.finish();
    let mut group = c.benchmark_group("decide");
    for rules in SIZES {
        let policy = compile(&policy_text(rules));
        let (allowed, denied) = (job(10_000 + rules - 1), job(1));
        assert!(policy.decide("deploy", &allowed).is_ok());
        assert!(policy.decide("deploy", &denied).is_err());
        group.bench_with_input(
            BenchmarkId::new("allow_last_rule", rules),
            &allowed,
            |b, claims| b.iter(|| policy.decide(black_box("deploy"), black_box(claims))),
        );
        group.bench_with_input(BenchmarkId::new("deny", rules), &denied, |b, claims| {
            b.iter(|| policy.decide(black_box("deploy"), black_box(claims)))
        });
    }
    group.finish();
}

/// p99 of 20,000 single decisions, allow and deny alternating.
fn decide_p99(rules: usize) -> Duration {
    let policy = compile(&policy_text(rules));
    let jobs = [job(10_000 + rules - 1), job(1)];
    let mut samples: Vec<Duration> = (0..20_000)
        .map(|i| {
            let started = Instant::now();
            let _ = black_box(policy.decide("deploy", &jobs[i % 2]));
            started.elapsed()
        })
        .collect();
    samples.sort_unstable();
    samples[samples.len() * 99 / 100]
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    benches(&mut criterion);
    criterion.final_summary();
    // `cargo test --all-targets` runs benches once as a smoke test; the p99 runs only as a bench.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    for rules in SIZES {
        println!("decide p99 at {rules:>6} rules: {:?}", decide_p99(rules));
    }
}
