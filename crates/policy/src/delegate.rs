//! Delegation: the root policy's `[delegate.NAME]` entries hand a file of roles (and tokens,
//! where allowed) to a team, under a guardrail the platform team sets: conditions joined to
//! every rule of the file, the role ARNs it may grant, a cap on session length. Each delegated
//! file is read and compiled with the root (same format, same checks) and every breach of its
//! guardrail is a compile error at the breaching place in the team's file.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use crate::compile::{
    CompileError, Context, compile_condition, compile_role, compile_token, error_at, parse_duration,
};
use crate::file::{LineIndex, RawDelegate, RawDelegated, RawPolicy, RawRule, RawValue, Source};
use crate::{Delegate, Guardrail, Pattern, Role, TokenGrant};

/// Where a grant's name was defined, for the message about a second definition.
struct Place {
    file: String,
    line: usize,
}

/// Compiles every `[delegate.*]` of `raw` and the file each names, appending their roles and
/// tokens to the root's (`roles`, `tokens`) with the delegate attached to each grant.
pub(crate) fn compile_all(
    raw: &RawPolicy,
    root: &Context<'_>,
    read: &dyn Fn(&str) -> Result<String, String>,
    roles: &mut Vec<Role>,
    tokens: &mut Vec<TokenGrant>,
) -> Result<Vec<Arc<Delegate>>, CompileError> {
    let mut names: HashMap<String, Place> = HashMap::new();
    let root_place = |line| Place {
        file: "the root policy".to_owned(),
        line,
    };
    for name in raw.roles.keys() {
        let line = root.lines.line(name.span().start);
        names.insert(format!("role {}", name.get_ref()), root_place(line));
    }
    for name in raw.tokens.keys() {
        let line = root.lines.line(name.span().start);
        names.insert(format!("token {}", name.get_ref()), root_place(line));
    }
    let mut delegates = Vec::new();
    for (name, entry) in &raw.delegates {
        let delegate = Arc::new(compile_delegate(name, entry, root)?);
        let text = read(&delegate.file).or_else(|e| {
            error_at(
                entry.get_ref().file.span(),
                format!(
                    "delegate {:?}: file {:?}: {e}",
                    delegate.name, delegate.file
                ),
            )
        })?;
        let source = Arc::new(Source {
            file: delegate.file.clone(),
            text,
        });
        compile_file(&delegate, &source, root, read, &mut names, roles, tokens)
            .map_err(|e| e.in_file(&source))?;
        delegates.push(delegate);
    }
    Ok(delegates)
}

/// One `[delegate.NAME]` entry of the root policy.
fn compile_delegate(
    name: &Spanned<String>,
    entry: &Spanned<RawDelegate>,
    root: &Context<'_>,
) -> Result<Delegate, CompileError> {
    crate::names::RoleName::parse(name.get_ref())
        .or_else(|e| error_at(name.span(), format!("delegate name {e}")))?;
    let raw = entry.get_ref();
    let file = raw.file.get_ref();
    if file.is_empty() || file.starts_with('/') || file.split('/').any(|part| part == "..") {
        return error_at(
            raw.file.span(),
            "`file` is a path below the root policy's directory (no `..`, not absolute)",
        );
    }
    let role_arns = raw
        .role_arns
        .get_ref()
        .iter()
        .map(|arn| {
            arn_pattern(arn.get_ref()).or_else(|e| error_at(arn.span(), format!("role_arns: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if role_arns.is_empty() {
        return error_at(
            raw.role_arns.span(),
            "role_arns: name at least one role ARN (pattern) the file may grant",
        );
    }
    let max_duration = match &raw.max_duration {
        None => None,
        Some(d) => Some(
            parse_duration(d.get_ref())
                .or_else(|e| error_at(d.span(), format!("max_duration: {e}")))?,
        ),
    };
    Ok(Delegate {
        name: name.get_ref().clone(),
        file: file.clone(),
        line: root.lines.line(name.span().start),
        require: compile_require(&raw.require, root)?,
        role_arns,
        max_duration,
        tokens: raw.tokens.as_ref().is_some_and(|t| *t.get_ref()),
        audiences: raw
            .audiences
            .as_ref()
            .map(|a| a.get_ref().clone())
            .unwrap_or_default(),
    })
}

/// A role ARN pattern: `arn:` followed by what a role ARN holds, globs allowed (`*` and `?`
/// stay inside one `/`-separated segment, as in rules).
fn arn_pattern(source: &str) -> Result<Pattern, String> {
    if !source.starts_with("arn:") || !source.contains(":role/") {
        return Err(format!(
            "{source:?} is not a role ARN pattern like \"arn:aws:iam::111122223333:role/payments-*\""
        ));
    }
    Pattern::compile(source)
}

/// `require`: conditions in a rule's format (and `issuer`), at least one.
fn compile_require(raw: &Spanned<RawRule>, root: &Context<'_>) -> Result<Guardrail, CompileError> {
    let mut issuer = None;
    let mut conditions = Vec::new();
    for (key, value) in raw.get_ref() {
        match (key.get_ref().as_str(), value.get_ref()) {
            ("issuer", RawValue::One(url)) => {
                if !root.issuers.iter().any(|i| &i.url == url) {
                    return error_at(
                        value.span(),
                        format!("issuer {url:?} is not one of the [[issuer]] entries"),
                    );
                }
                issuer = Some(url.clone());
            }
            ("issuer", _) => return error_at(value.span(), "`issuer` is one issuer URL"),
            ("allow_path_only", _) => {
                return error_at(
                    key.span(),
                    "`allow_path_only` waives a lint of a rule; a guardrail has none to waive",
                );
            }
            (claim, raw_value) => conditions.push(compile_condition(
                key,
                claim,
                raw_value,
                value.span(),
                root,
            )?),
        }
    }
    if conditions.is_empty() {
        return error_at(
            raw.span(),
            "require: a guardrail needs at least one claim condition (namespace_id, say)",
        );
    }
    Ok(Guardrail {
        line: root.lines.line(raw.span().start),
        issuer,
        conditions,
    })
}

/// A delegated file's roles and tokens, each checked against the delegate's guardrail.
fn compile_file(
    delegate: &Arc<Delegate>,
    source: &Arc<Source>,
    root: &Context<'_>,
    read: &dyn Fn(&str) -> Result<String, String>,
    names: &mut HashMap<String, Place>,
    roles: &mut Vec<Role>,
    tokens: &mut Vec<TokenGrant>,
) -> Result<(), CompileError> {
    let raw: RawDelegated = toml::from_str(&source.text).map_err(|e| CompileError {
        offset: e.span().map_or(0, |span| span.start),
        message: format!(
            "{} (a delegated file holds [role.*] and, where its delegate allows, [token.*]; audience, [[issuer]] and [delegate.*] belong to the root policy)",
            e.message()
        ),
        source: None,
    })?;
    let context = Context {
        issuers: root.issuers,
        token_uses: root.token_uses,
        lines: LineIndex::new(&source.text),
        patterns: Default::default(),
    };
    // Session policies are named relative to the file that names them.
    let dir = match delegate.file.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/"),
        None => String::new(),
    };
    // Inside the tree: a team's file may not name a file elsewhere on the build host (it would
    // be bundled, and shown in the review's diff).
    let read_beside = |path: &str| {
        if path.starts_with('/') || path.split('/').any(|part| part == "..") {
            return Err(
                "a delegated file's session policy must be a path below it (no `..`, not absolute)"
                    .to_owned(),
            );
        }
        read(&format!("{dir}{path}"))
    };
    for (name, entry) in &raw.roles {
        let mut role = compile_role(name, entry, &context, &read_beside)?;
        check_role(delegate, entry, &role)?;
        check_uses(
            entry.get_ref().token_uses.as_ref(),
            role.grant.token_uses,
            root,
            name,
        )?;
        claim_name(names, "role", name, delegate, &context)?;
        role.grant.delegate = Some(delegate.clone());
        roles.push(role);
    }
    for (name, entry) in &raw.tokens {
        if !delegate.tokens {
            return error_at(
                name.span(),
                format!(
                    "[token.{}]: delegate {:?} may not define tokens (set `tokens = true` in its [delegate] entry to allow them)",
                    name.get_ref(),
                    delegate.name
                ),
            );
        }
        let raw_token = entry.get_ref();
        // What a token says is what relying parties trust: its subject is the broker's own
        // (built from ids), its audience one the platform team handed out, its lifetime capped.
        if let Some(subject) = &raw_token.subject {
            return error_at(
                subject.span(),
                format!(
                    "[token.{}]: a delegated file may not set `subject` (a team could write another project's identity into it); the broker's default is built from the job's own ids",
                    name.get_ref()
                ),
            );
        }
        if !delegate
            .audiences
            .iter()
            .any(|a| a == raw_token.audience.get_ref())
        {
            return error_at(
                raw_token.audience.span(),
                format!(
                    "audience {:?} is not one delegate {:?} may issue tokens for (audiences: {})",
                    raw_token.audience.get_ref(),
                    delegate.name,
                    delegate.audiences.join(", ")
                ),
            );
        }
        let mut token = compile_token(name, entry, &context)?;
        if let Some(cap) = delegate.max_duration
            && token.max_ttl > cap
        {
            let span = raw_token
                .max_ttl
                .as_ref()
                .map_or(entry.span(), |t| t.span());
            return error_at(
                span,
                format!(
                    "max_ttl {} is over delegate {:?}'s cap of {}",
                    human(token.max_ttl),
                    delegate.name,
                    human(cap)
                ),
            );
        }
        check_uses(
            raw_token.token_uses.as_ref(),
            token.grant.token_uses,
            root,
            name,
        )?;
        if tokens.iter().any(|t| t.audience == token.audience) {
            return error_at(
                entry.get_ref().audience.span(),
                format!(
                    "audience {:?} is given by another [token] entry",
                    token.audience
                ),
            );
        }
        claim_name(names, "token", name, delegate, &context)?;
        token.grant.delegate = Some(delegate.clone());
        tokens.push(token);
    }
    Ok(())
}

/// A role of the file within its delegate's `role_arns` and `max_duration`.
fn check_role(
    delegate: &Delegate,
    entry: &Spanned<crate::file::RawRole>,
    role: &Role,
) -> Result<(), CompileError> {
    let raw = entry.get_ref();
    let arn = role.arn.as_str();
    if !delegate.role_arns.iter().any(|p| p.matches(arn)) {
        let allowed: Vec<&str> = delegate.role_arns.iter().map(Pattern::source).collect();
        return error_at(
            raw.arn.span(),
            format!(
                "arn {arn:?} is outside what delegate {:?} may grant (role_arns: {})",
                delegate.name,
                allowed.join(", ")
            ),
        );
    }
    if let Some(cap) = delegate.max_duration
        && role.max_duration > cap
    {
        let span = raw.max_duration.as_ref().map_or(entry.span(), |d| d.span());
        return error_at(
            span,
            format!(
                "max_duration {} is over delegate {:?}'s cap of {}",
                human(role.max_duration),
                delegate.name,
                human(cap)
            ),
        );
    }
    Ok(())
}

/// A team's `token_uses` may be stricter than the root's default, never looser: the platform
/// team's single-use default holds for every file.
fn check_uses(
    raw: Option<&Spanned<crate::file::RawUses>>,
    uses: Option<u32>,
    root: &Context<'_>,
    name: &Spanned<String>,
) -> Result<(), CompileError> {
    let Some(default) = root.token_uses else {
        return Ok(());
    };
    if uses.is_some_and(|n| n <= default) {
        return Ok(());
    }
    let span = raw.map_or(name.span(), |r| r.span());
    error_at(
        span,
        format!(
            "token_uses: the root policy allows at most {default} use(s) of a token; a delegated file may lower it, not raise or lift it"
        ),
    )
}

/// Records `name` as defined here; a second definition anywhere in the tree is an error that
/// names the first.
fn claim_name(
    names: &mut HashMap<String, Place>,
    kind: &str,
    name: &Spanned<String>,
    delegate: &Delegate,
    context: &Context<'_>,
) -> Result<(), CompileError> {
    let key = format!("{kind} {}", name.get_ref());
    let here = Place {
        file: delegate.file.clone(),
        line: context.lines.line(name.span().start),
    };
    if let Some(first) = names.get(&key) {
        return error_at(
            name.span(),
            format!(
                "{kind} {:?} is defined twice: here and in {}, line {}",
                name.get_ref(),
                first.file,
                first.line
            ),
        );
    }
    names.insert(key, here);
    Ok(())
}

fn human(duration: Duration) -> String {
    let secs = duration.as_secs();
    match (secs % 3600, secs % 60) {
        (0, _) => format!("{}h", secs / 3600),
        (_, 0) => format!("{}m", secs / 60),
        _ => format!("{secs}s"),
    }
}
