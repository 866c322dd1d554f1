//! Shared by `tests/lint.rs` and the root's `tests/cli.rs` (included with `#[path]`): the bundled
//! policy as README's "Deploying", step 1 has a user make it.

/// `text` (policy.toml) with its example role uncommented.
pub fn uncommented(text: &str) -> String {
    let (head, example) = text.split_at(text.find("# An example to copy").unwrap());
    let mut lines = example.lines();
    let mut edited = format!("{head}{}\n", lines.next().unwrap());
    for line in lines {
        edited.push_str(
            line.strip_prefix("# ")
                .unwrap_or(line.trim_start_matches('#')),
        );
        edited.push('\n');
    }
    assert!(edited.contains("\n[role.deploy-web-prod]\n"), "{edited}");
    edited
}
