//! Policy engine costs: compile and decide for policies of 10, 1,000 and 10,000 rules, plus the
//! p99 of single decisions (the budget is about one request's tail, which a mean hides); and the
//! same for a delegated tree of 1,000 team files, 10,000 roles and 30,000 rules written by
//! `scripts/gen-policy-tree` (issue 21).
//!
//! cargo bench -p token-broker-policy --bench decide

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use token_broker_policy::lazy::Bundle;
use token_broker_policy::{Claims, LazyPolicy, Policy, parse};

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
    p99(|i| {
        let _ = black_box(policy.decide("deploy", &jobs[i % 2]));
    })
}

/// p99 of 20,000 timed calls of `decide(i)`.
fn p99(mut decide: impl FnMut(usize)) -> Duration {
    let mut samples: Vec<Duration> = (0..20_000)
        .map(|i| {
            let started = Instant::now();
            decide(i);
            started.elapsed()
        })
        .collect();
    samples.sort_unstable();
    samples[samples.len() * 99 / 100]
}

/// The delegated tree `scripts/gen-policy-tree` writes with its defaults (1,000 files of 10
/// roles of 3 rules), in a directory of its own; its root policy.
fn generated_tree() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("token-broker-bench-tree-{}", std::process::id()));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/gen-policy-tree");
    let status = Command::new("python3")
        .arg(script)
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("python3 runs scripts/gen-policy-tree");
    assert!(status.success(), "scripts/gen-policy-tree failed");
    dir.join("policy.toml")
}

/// Jobs of the generated tree, each asking for a role: (name, role, claims). Team 1000 is the
/// last file, so the slowest for a search in file order.
fn tree_jobs() -> Vec<(&'static str, &'static str, Claims)> {
    let job = |project: &str, namespace: &str, reference: &str, environment: &str| {
        Claims::from_pairs(
            "https://gitlab.example.com",
            [
                ("project_id", project),
                ("namespace_id", namespace),
                ("ref", reference),
                ("ref_type", "branch"),
                ("ref_protected", "true"),
                ("environment", environment),
                ("environment_protected", "true"),
            ],
        )
    };
    vec![
        // Rule 1 of team 1000's first role.
        (
            "allow",
            "team-1000-deploy-prod",
            job("1100001", "21000", "main", "production"),
        ),
        // The same job asking for a role whose rules name other projects.
        (
            "deny",
            "team-1000-terraform-apply",
            job("1100001", "21000", "main", "production"),
        ),
        // A rule matches, the guardrail's namespace does not.
        (
            "guardrail",
            "team-1000-deploy-prod",
            job("1100001", "666", "main", "production"),
        ),
        (
            "unknown_role",
            "no-such-role",
            job("1100001", "21000", "main", "production"),
        ),
    ]
}

/// The tree at `root` packed as `build.rs` packs it, in memory for the rest of the run (as in
/// the binary).
fn bundle(root: &Path) -> &'static [u8] {
    let text = std::fs::read_to_string(root).expect("the tree's root");
    let dir = root.parent().expect("a directory").to_owned();
    let read =
        |relative: &str| std::fs::read_to_string(dir.join(relative)).map_err(|e| e.to_string());
    let bundle = Bundle::build(root, &text, &read).expect("the tree compiles");
    assert_eq!(bundle.eager_because(), None);
    Box::leak(bundle.bytes().to_vec().into_boxed_slice())
}

fn lazy(root: &Path, bundle: &'static [u8]) -> LazyPolicy {
    LazyPolicy::from_bundle(root, bundle).expect("the bundle loads")
}

/// A job from a project no rule names: `admits_project`'s slowest answer.
fn stranger() -> Claims {
    Claims::from_pairs(
        "https://gitlab.example.com",
        [
            ("project_id", "1"),
            ("namespace_id", "2"),
            ("project_path", "x/y"),
        ],
    )
}

fn tree_benches(c: &mut Criterion, root: &Path, bundle: &'static [u8]) {
    let mut group = c.benchmark_group("tree");
    group.sample_size(10);
    group.bench_function("compile_eager", |b| {
        b.iter(|| token_broker_policy::load(black_box(root)).expect("the tree compiles"))
    });
    group.finish();
    let mut group = c.benchmark_group("tree");
    group.bench_function("start_lazy", |b| b.iter(|| lazy(root, black_box(bundle))));
    let (_, first, claims) = &tree_jobs()[0];
    group.bench_function("start_lazy_and_first_decision", |b| {
        b.iter(|| lazy(root, black_box(bundle)).decide(first, claims).is_ok())
    });
    let policy = token_broker_policy::load(root).expect("the tree compiles");
    let lazy = lazy(root, bundle);
    for (name, role, claims) in tree_jobs() {
        assert_eq!(
            policy.decide(role, &claims).is_ok(),
            name == "allow",
            "{name}"
        );
        let rule =
            |decided: Result<token_broker_policy::Admitted<'_, _>, _>| decided.map(|a| a.rule);
        assert_eq!(
            rule(lazy.decide(role, &claims)),
            rule(policy.decide(role, &claims))
        );
        group.bench_with_input(
            BenchmarkId::new("decide_eager", name),
            &claims,
            |b, claims| b.iter(|| policy.decide(black_box(role), black_box(claims))),
        );
        group.bench_with_input(
            BenchmarkId::new("decide_lazy", name),
            &claims,
            |b, claims| b.iter(|| lazy.decide(black_box(role), black_box(claims))),
        );
    }
    let stranger = stranger();
    assert!(!policy.admits_project(&stranger) && !lazy.admits_project(&stranger));
    group.bench_function("admits_project_eager", |b| {
        b.iter(|| policy.admits_project(black_box(&stranger)))
    });
    group.bench_function("admits_project_lazy", |b| {
        b.iter(|| lazy.admits_project(black_box(&stranger)))
    });
    group.finish();
}

/// p99 of single decisions on the tree, the jobs of [`tree_jobs`] in turn, whole and lazily (its
/// files already compiled: the first use of a file is `start_lazy_and_first_decision`).
fn tree_p99(root: &Path, bundle: &'static [u8]) -> (Duration, Duration) {
    let policy = token_broker_policy::load(root).expect("the tree compiles");
    let lazy = lazy(root, bundle);
    let jobs = tree_jobs();
    let eager = p99(|i| {
        let (_, role, claims) = &jobs[i % jobs.len()];
        let _ = black_box(policy.decide(role, claims));
    });
    let lazy = p99(|i| {
        let (_, role, claims) = &jobs[i % jobs.len()];
        let _ = black_box(lazy.decide(role, claims));
    });
    (eager, lazy)
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    benches(&mut criterion);
    let tree = generated_tree();
    let bundle = bundle(&tree);
    tree_benches(&mut criterion, &tree, bundle);
    criterion.final_summary();
    // `cargo test --all-targets` runs benches once as a smoke test; the p99 runs only as a bench.
    if std::env::args().any(|arg| arg == "--bench") {
        for rules in SIZES {
            println!("decide p99 at {rules:>6} rules: {:?}", decide_p99(rules));
        }
        let (eager, lazy) = tree_p99(&tree, bundle);
        println!("decide p99 on the tree: {eager:?} compiled whole, {lazy:?} lazily");
    }
    let _ = std::fs::remove_dir_all(tree.parent().expect("the tree's directory"));
}
