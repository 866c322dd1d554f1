//! The deployment files keep their security properties: a later edit of template.yaml that opens
//! another route, widens an IAM grant or changes the key fails here, not in an audit.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_yaml::Value;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

fn template() -> Value {
    serde_yaml::from_str(&read("template.yaml")).unwrap()
}

fn tagged<'a>(value: &'a Value, tag: &str) -> &'a Value {
    match value {
        Value::Tagged(t) if t.tag == tag => &t.value,
        other => panic!("expected {tag}, got {other:?}"),
    }
}

fn resources_of_type<'a>(template: &'a Value, kind: &str) -> Vec<(&'a str, &'a Value)> {
    template["Resources"]
        .as_mapping()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"] == kind)
        .map(|(name, r)| (name.as_str().unwrap(), r))
        .collect()
}

/// Every statement of a policy document as (actions, resource); a conditional statement
/// (`!If [condition, statement, !Ref AWS::NoValue]`) counts as the statement it may add.
fn statements(document: &Value) -> Vec<(BTreeSet<String>, Value)> {
    document["Statement"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|s| match s {
            Value::Tagged(t) if t.tag == "!If" => {
                assert_eq!(tagged(&t.value[2], "!Ref"), "AWS::NoValue", "{s:?}");
                &t.value[1]
            }
            s => s,
        })
        .map(|s| {
            assert_eq!(s["Effect"], "Allow");
            let actions = match &s["Action"] {
                Value::String(one) => BTreeSet::from([one.clone()]),
                Value::Sequence(many) => many
                    .iter()
                    .map(|a| a.as_str().unwrap().to_owned())
                    .collect(),
                other => panic!("Action {other:?}"),
            };
            (actions, s["Resource"].clone())
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_function_is_arm64_al2023_built_by_cargo_lambda() {
    let template = template();
    let functions = resources_of_type(&template, "AWS::Serverless::Function");
    assert_eq!(functions.len(), 1, "exactly one function");
    let function = functions[0].1;
    assert_eq!(function["Metadata"]["BuildMethod"], "rust-cargolambda");
    assert_eq!(
        function["Metadata"]["BuildProperties"]["Binary"],
        "token-broker"
    );
    let properties = &function["Properties"];
    assert_eq!(properties["Runtime"], "provided.al2023");
    assert_eq!(properties["Handler"], "bootstrap");
    assert_eq!(
        properties["Architectures"],
        Value::Sequence(vec!["arm64".into()])
    );
    assert_eq!(properties["MemorySize"], 128);
    assert!(
        properties["Timeout"].as_u64().unwrap() >= 12,
        "covers JWKS (3 s) + STS (8 s)"
    );
    assert_eq!(properties["LoggingConfig"]["LogFormat"], "JSON");
    assert!(
        properties["Environment"]["Variables"]
            .get("TOKEN_BROKER_POLICY")
            .is_none(),
        "the bundled policy is used"
    );
}

#[test]
fn the_function_url_with_auth_none_is_the_only_way_in() {
    let template = template();
    let function = resources_of_type(&template, "AWS::Serverless::Function")[0].1;
    assert_eq!(
        function["Properties"]["FunctionUrlConfig"]["AuthType"],
        "NONE"
    );
    assert!(
        function["Properties"].get("Events").is_none(),
        "no API Gateway or other event source"
    );
    for kind in [
        "AWS::Serverless::Api",
        "AWS::Serverless::HttpApi",
        "AWS::ApiGateway::RestApi",
        "AWS::ApiGatewayV2::Api",
        "AWS::Lambda::Permission",
        "AWS::Lambda::Url",
        "AWS::ElasticLoadBalancingV2::LoadBalancer",
    ] {
        assert!(
            resources_of_type(&template, kind).is_empty(),
            "unexpected {kind}"
        );
    }
}

#[test]
fn iam_grants_exactly_the_listed_actions_on_the_listed_resources() {
    let template = template();
    let roles = resources_of_type(&template, "AWS::IAM::Role");
    assert_eq!(roles.len(), 1);
    let role = &roles[0].1["Properties"];
    assert!(
        role.get("ManagedPolicyArns").is_none(),
        "no managed policies"
    );
    let trust = statements(&role["AssumeRolePolicyDocument"]);
    assert_eq!(trust.len(), 1);
    assert_eq!(
        roles[0].1["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]["Service"],
        "lambda.amazonaws.com"
    );

    let mut grants: Vec<(BTreeSet<String>, Value)> = role["Policies"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|p| statements(&p["PolicyDocument"]))
        .collect();
    for (_, policy) in resources_of_type(&template, "AWS::IAM::Policy") {
        grants.extend(statements(&policy["Properties"]["PolicyDocument"]));
    }
    assert_eq!(grants.len(), 5, "{grants:?}");
    let find_all = |actions: &[&str]| -> Vec<Value> {
        grants
            .iter()
            .filter(|(a, _)| *a == set(actions))
            .map(|(_, resource)| resource.clone())
            .collect()
    };
    let find = |actions: &[&str]| {
        let mut found = find_all(actions);
        assert_eq!(found.len(), 1, "{actions:?}");
        found.remove(0)
    };
    assert_eq!(
        tagged(
            &find(&["logs:CreateLogStream", "logs:PutLogEvents"]),
            "!GetAtt"
        ),
        "LogGroup.Arn"
    );
    // What they resolve to is checked below, stack by stack.
    let assume = find_all(&["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"]);
    assert_eq!(assume.len(), 2, "{assume:?}");
    assert_eq!(
        tagged(&tagged(&assume[0], "!If")[1], "!Ref"),
        "AssumableRoleArns"
    );
    assert_eq!(tagged(&assume[1], "!Ref"), "AnyAccountRoleArns");
    assert_eq!(
        tagged(&find(&["kms:Sign", "kms:GetPublicKey"]), "!GetAtt"),
        "SigningKey.Arn"
    );
    assert_eq!(
        tagged(&find(&["dynamodb:UpdateItem"]), "!GetAtt"),
        "ReplayTable.Arn"
    );
}

/// template.yaml as CloudFormation resolves it for one stack: parameters defaulted and checked
/// against `AllowedPattern` and `AllowedValues`, then the conditions and intrinsic functions of
/// the function role's policies (anything else panics rather than guess).
struct Stack {
    template: Value,
    account: &'static str,
    partition: &'static str,
    parameters: BTreeMap<String, Value>,
}

impl Stack {
    /// Deploys template.yaml with `overrides` (`sam deploy --parameter-overrides`), or says why
    /// CloudFormation refuses them.
    fn deploy(account: &'static str, overrides: &[(&str, &str)]) -> Result<Stack, String> {
        Stack::deploy_in("aws", account, overrides)
    }

    fn deploy_in(
        partition: &'static str,
        account: &'static str,
        overrides: &[(&str, &str)],
    ) -> Result<Stack, String> {
        let template = template();
        let declared = template["Parameters"].as_mapping().unwrap();
        if let Some((name, _)) = overrides
            .iter()
            .find(|(name, _)| !declared.contains_key(*name))
        {
            return Err(format!("{name} is not a parameter"));
        }
        let mut parameters = BTreeMap::new();
        for (name, declaration) in declared {
            let name = name.as_str().unwrap();
            let text = match overrides.iter().find(|(n, _)| *n == name) {
                Some((_, value)) => value.to_string(),
                None => scalar_text(&declaration["Default"])
                    .ok_or_else(|| format!("{name} has no value"))?,
            };
            parameters.insert(name.to_owned(), parameter_value(name, declaration, &text)?);
        }
        Ok(Stack {
            template,
            account,
            partition,
            parameters,
        })
    }

    /// The statements of the function role's inline policy `name`, resolved.
    fn role_policy(&self, name: &str) -> Vec<Value> {
        let policy = self.template["Resources"]["FunctionRole"]["Properties"]["Policies"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["PolicyName"] == name)
            .unwrap_or_else(|| panic!("no policy {name}"));
        let document = self.resolve(&policy["PolicyDocument"]).unwrap();
        document["Statement"].as_sequence().unwrap().clone()
    }

    /// Resources of the statements that allow `sts:AssumeRole`, by `Sid`; a single resource
    /// comes back as a list of one, as IAM reads it.
    fn assumable(&self) -> BTreeMap<String, Vec<String>> {
        self.role_policy("assume-target-roles")
            .iter()
            .filter(|s| {
                s["Action"]
                    .as_sequence()
                    .unwrap()
                    .contains(&"sts:AssumeRole".into())
            })
            .map(|s| {
                let resources = match &s["Resource"] {
                    Value::String(one) => vec![one.clone()],
                    Value::Sequence(many) => many
                        .iter()
                        .map(|r| r.as_str().unwrap().to_owned())
                        .collect(),
                    other => panic!("Resource {other:?}"),
                };
                (s["Sid"].as_str().unwrap().to_owned(), resources)
            })
            .collect()
    }

    /// `value` with its intrinsic functions evaluated; `None` is `AWS::NoValue`, which drops the
    /// list item or the key that holds it.
    fn resolve(&self, value: &Value) -> Option<Value> {
        match value {
            Value::Tagged(t) => self.function(&t.tag.to_string(), &t.value),
            Value::Sequence(items) => Some(Value::Sequence(
                items.iter().filter_map(|i| self.resolve(i)).collect(),
            )),
            Value::Mapping(entries) => Some(Value::Mapping(
                entries
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), self.resolve(v)?)))
                    .collect(),
            )),
            scalar => Some(scalar.clone()),
        }
    }

    fn function(&self, tag: &str, argument: &Value) -> Option<Value> {
        match tag {
            "!Ref" => self.reference(argument.as_str().unwrap()),
            "!Sub" => {
                let text = argument.as_str().expect("!Sub of a string");
                let placeholder = regex::Regex::new(r"\$\{([\w:]+)\}").unwrap();
                let text = placeholder.replace_all(text, |c: &regex::Captures| {
                    let value = self.reference(&c[1]).unwrap();
                    value.as_str().expect("!Sub of a string value").to_owned()
                });
                Some(Value::String(text.into_owned()))
            }
            "!If" => {
                let branch = if self.condition(argument[0].as_str().unwrap()) {
                    &argument[1]
                } else {
                    &argument[2]
                };
                self.resolve(branch)
            }
            "!Join" => {
                let separator = argument[0].as_str().unwrap();
                let items = self.resolve(&argument[1]).unwrap();
                let items: Vec<&str> = items
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|i| i.as_str().unwrap())
                    .collect();
                Some(Value::String(items.join(separator)))
            }
            other => panic!("{other} is not resolved here"),
        }
    }

    fn reference(&self, name: &str) -> Option<Value> {
        match name {
            "AWS::NoValue" => None,
            "AWS::AccountId" => Some(self.account.into()),
            "AWS::Partition" => Some(self.partition.into()),
            "AWS::StackName" => Some("token-broker".into()),
            parameter => Some(
                self.parameters
                    .get(parameter)
                    .unwrap_or_else(|| panic!("!Ref {parameter} (a resource?)"))
                    .clone(),
            ),
        }
    }

    fn condition(&self, name: &str) -> bool {
        self.holds(&self.template["Conditions"][name])
    }

    fn holds(&self, condition: &Value) -> bool {
        let Value::Tagged(t) = condition else {
            panic!("condition {condition:?}")
        };
        match t.tag.to_string().as_str() {
            "!Equals" => self.resolve(&t.value[0]) == self.resolve(&t.value[1]),
            "!Not" => !self.holds(&t.value[0]),
            other => panic!("{other} in a condition"),
        }
    }
}

/// A parameter's value as CloudFormation takes it: a CommaDelimitedList is split at commas,
/// and `AllowedPattern` must match the whole value, or each entry of a list.
fn parameter_value(name: &str, declaration: &Value, text: &str) -> Result<Value, String> {
    let list = declaration["Type"] == "CommaDelimitedList";
    let entries: Vec<&str> = if list {
        text.split(',').collect()
    } else {
        vec![text]
    };
    if let Some(pattern) = declaration["AllowedPattern"].as_str() {
        let pattern = regex::Regex::new(&format!("^(?:{pattern})$")).unwrap();
        if let Some(entry) = entries.iter().find(|e| !pattern.is_match(e)) {
            return Err(format!("{name}: {entry:?} does not match AllowedPattern"));
        }
    }
    if let Some(allowed) = declaration["AllowedValues"].as_sequence() {
        if !allowed
            .iter()
            .any(|a| scalar_text(a).as_deref() == Some(text))
        {
            return Err(format!("{name}: {text:?} is not an AllowedValue"));
        }
    }
    Ok(if list {
        Value::Sequence(entries.into_iter().map(Value::from).collect())
    } else {
        Value::String(text.to_owned())
    })
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

const ACCOUNT: &str = "123456789012";
const OTHER_ACCOUNT: &str = "210987654321";

#[test]
fn by_default_the_broker_may_assume_only_this_accounts_token_broker_target_roles() {
    for account in [ACCOUNT, OTHER_ACCOUNT] {
        let stack = Stack::deploy(account, &[]).unwrap();
        assert_eq!(
            stack.assumable(),
            BTreeMap::from([(
                "NamedAccounts".to_owned(),
                vec![format!("arn:aws:iam::{account}:role/token-broker-target-*")]
            )])
        );
    }
    let gov = Stack::deploy_in("aws-us-gov", ACCOUNT, &[]).unwrap();
    assert_eq!(
        gov.assumable()["NamedAccounts"],
        ["arn:aws-us-gov:iam::123456789012:role/token-broker-target-*"]
    );
}

#[test]
fn assumable_role_arns_of_named_accounts_replace_the_default() {
    let roles = "arn:aws:iam::210987654321:role/ci-*,arn:aws:iam::123456789012:role/deploy/web";
    let stack = Stack::deploy(ACCOUNT, &[("AssumableRoleArns", roles)]).unwrap();
    assert_eq!(
        stack.assumable(),
        BTreeMap::from([(
            "NamedAccounts".to_owned(),
            roles.split(',').map(String::from).collect()
        )])
    );
    let every_role = "arn:aws:iam::123456789012:role/*";
    let stack = Stack::deploy(ACCOUNT, &[("AssumableRoleArns", every_role)]).unwrap();
    assert_eq!(stack.assumable()["NamedAccounts"], [every_role]);
}

#[test]
fn a_wildcard_account_or_anything_but_a_role_is_refused_in_assumable_role_arns() {
    for refused in [
        "*",
        "arn:aws:iam::*:role/token-broker-target-*",
        "arn:aws:iam::*:*",
        "arn:aws:iam::12345678901*:role/ci-*",
        "arn:aws:iam::123456789012:role/ci-*,arn:aws:iam::*:role/ci-*",
        "arn:aws:iam::123456789012:user/x",
        "arn:aws:iam::123456789012:*",
        "arn:aws:iam::1234567890:role/short-account",
        "arn:aws:iam::123456789012:role/ci-deploy\narn:aws:iam::*:role/x",
    ] {
        let refusal = Stack::deploy(ACCOUNT, &[("AssumableRoleArns", refused)]).err();
        assert!(
            refusal.is_some_and(|r| r.starts_with("AssumableRoleArns:")),
            "{refused:?}"
        );
    }
}

#[test]
fn a_wildcard_account_is_granted_only_through_any_account_role_arns() {
    let any = "arn:aws:iam::*:role/token-broker-target-*";
    let stack = Stack::deploy(ACCOUNT, &[("AnyAccountRoleArns", any)]).unwrap();
    assert_eq!(
        stack.assumable(),
        BTreeMap::from([
            (
                "NamedAccounts".to_owned(),
                vec!["arn:aws:iam::123456789012:role/token-broker-target-*".to_owned()]
            ),
            ("AnyAccount".to_owned(), vec![any.to_owned()]),
        ])
    );
    // Only wildcard accounts belong there; a named account goes in AssumableRoleArns.
    for refused in [
        "*",
        "arn:aws:iam::*:*",
        "arn:aws:iam::123456789012:role/ci-*",
    ] {
        let refusal = Stack::deploy(ACCOUNT, &[("AnyAccountRoleArns", refused)]).err();
        assert!(
            refusal.is_some_and(|r| r.starts_with("AnyAccountRoleArns:")),
            "{refused:?}"
        );
    }
}

#[test]
fn the_parameter_overrides_shown_in_readme_and_samconfig_deploy() {
    let readme = regex::Regex::new(r"--parameter-overrides (?:'([^']*)'|(\w+=[^\s`']+))").unwrap();
    let samconfig = regex::Regex::new(r#"(?m)^# parameter_overrides = "([^"]*)""#).unwrap();
    let shown: Vec<String> = readme
        .captures_iter(&read("README.md"))
        .chain(samconfig.captures_iter(&read("samconfig.toml")))
        .map(|c| {
            c.iter()
                .skip(1)
                .flatten()
                .next()
                .unwrap()
                .as_str()
                .to_owned()
        })
        .collect();
    assert!(shown.len() >= 3, "{shown:?}");
    for overrides in &shown {
        let pairs: Vec<(&str, &str)> = overrides
            .split_whitespace()
            .map(|pair| pair.split_once('=').unwrap())
            .collect();
        if let Err(refusal) = Stack::deploy(ACCOUNT, &pairs) {
            panic!("{overrides}: {refusal}");
        }
    }
}

#[test]
fn the_signing_key_is_rsa_2048_for_signing_and_the_function_may_only_sign_and_read_it() {
    let template = template();
    let keys = resources_of_type(&template, "AWS::KMS::Key");
    assert_eq!(keys.len(), 1);
    let key = &keys[0].1["Properties"];
    assert_eq!(key["KeySpec"], "RSA_2048");
    assert_eq!(key["KeyUsage"], "SIGN_VERIFY");
    let statements = key["KeyPolicy"]["Statement"].as_sequence().unwrap();
    let function_statement = statements
        .iter()
        .find(
            |s| matches!(&s["Principal"]["AWS"], Value::Tagged(t) if t.value == "FunctionRole.Arn"),
        )
        .expect("a statement for the function role");
    let actions: BTreeSet<String> = function_statement["Action"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(actions, set(&["kms:Sign", "kms:GetPublicKey"]));
}

#[test]
fn logs_go_to_an_explicit_group_with_retention() {
    let template = template();
    let groups = resources_of_type(&template, "AWS::Logs::LogGroup");
    assert_eq!(groups.len(), 1);
    assert_eq!(
        tagged(&groups[0].1["Properties"]["RetentionInDays"], "!Ref"),
        "LogRetentionDays"
    );
    let function = resources_of_type(&template, "AWS::Serverless::Function")[0].1;
    assert_eq!(
        tagged(&function["Properties"]["LoggingConfig"]["LogGroup"], "!Ref"),
        groups[0].0
    );
}

#[test]
fn outputs_name_the_url_issuer_role_and_key() {
    let template = template();
    for output in ["BrokerUrl", "IssuerUrl", "FunctionRoleArn", "SigningKeyArn"] {
        assert!(template["Outputs"].get(output).is_some(), "{output}");
    }
}

#[test]
fn samconfig_makes_build_and_deploy_flagless() {
    let config: toml::Table = toml::from_str(&read("samconfig.toml")).unwrap();
    let deploy = &config["default"]["deploy"]["parameters"];
    assert_eq!(deploy["resolve_s3"].as_bool(), Some(true));
    assert_eq!(deploy["confirm_changeset"].as_bool(), Some(false));
    assert_eq!(deploy["capabilities"].as_str(), Some("CAPABILITY_IAM"));
    assert_eq!(
        config["default"]["global"]["parameters"]["stack_name"].as_str(),
        Some("token-broker")
    );
    assert_eq!(
        config["default"]["validate"]["parameters"]["lint"].as_bool(),
        Some(true)
    );
}

#[test]
fn the_example_trust_policy_trusts_one_principal_and_requires_what_the_broker_sets() {
    let policy: serde_json::Value =
        serde_json::from_str(&read("examples/target-role-trust-policy.json")).unwrap();
    let statements = policy["Statement"].as_array().unwrap();
    assert_eq!(statements.len(), 1);
    let statement = &statements[0];
    let actions: BTreeSet<String> = statement["Action"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        actions,
        set(&["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"])
    );
    assert!(
        statement["Principal"]["AWS"]
            .as_str()
            .unwrap()
            .starts_with("arn:aws:iam::")
    );
    assert_eq!(
        statement["Condition"]["Null"]["sts:SourceIdentity"],
        "false"
    );
    assert_eq!(
        statement["Condition"]["StringEquals"]["aws:RequestTag/gitlab:project_id"],
        "4242"
    );
}

/// The examples take the components: consumer.yml the credentials component with the policy's
/// audience, broker.yml the policy review, which deploy waits for. (tests/api/gitlab_ci.rs runs
/// both in a GitLab CI emulator; this reads them as GitLab's YAML parser would.)
#[test]
fn the_gitlab_ci_examples_take_the_components_and_review_the_policy_before_deploying() {
    let consumer: Value = serde_yaml::from_str(&read("examples/gitlab-ci/consumer.yml")).unwrap();
    let include = &consumer["include"][0];
    assert!(
        include["component"]
            .as_str()
            .is_some_and(|c| c.ends_with("/aws-credentials@1.0.0")),
        "{include:?}"
    );
    assert_eq!(
        include["inputs"]["audience"],
        "https://token-broker.example.com"
    );
    assert_eq!(
        consumer["deploy-production"]["extends"],
        ".token-broker-credentials"
    );
    let broker: Value = serde_yaml::from_str(&read("examples/gitlab-ci/broker.yml")).unwrap();
    assert_eq!(broker["include"][0]["local"], "templates/policy-review.yml");
    let needs: Vec<&str> = broker["deploy"]["needs"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(needs.contains(&"policy-review") && needs.contains(&"test"));
}

/// The function's environment variable `name`.
fn environment<'a>(template: &'a Value, name: &str) -> &'a Value {
    &resources_of_type(template, "AWS::Serverless::Function")[0].1["Properties"]["Environment"]["Variables"]
        [name]
}

#[test]
fn the_replay_table_exists_only_when_enabled_on_demand_with_ttl_and_update_item_alone() {
    let template = template();
    assert_eq!(template["Parameters"]["ReplayGuard"]["Default"], "Disabled");
    let tables = resources_of_type(&template, "AWS::DynamoDB::Table");
    assert_eq!(tables.len(), 1);
    let (name, table) = tables[0];
    assert_eq!(name, "ReplayTable");
    assert_eq!(table["Condition"], "HasReplayGuard");
    let properties = &table["Properties"];
    assert_eq!(properties["BillingMode"], "PAY_PER_REQUEST");
    // The attributes the broker writes (src/aws/replay.rs), so template and code cannot drift.
    assert_eq!(
        properties["KeySchema"][0]["AttributeName"],
        token_broker::aws::replay::KEY_ATTRIBUTE
    );
    assert_eq!(
        properties["TimeToLiveSpecification"]["AttributeName"],
        token_broker::aws::replay::TTL_ATTRIBUTE
    );
    assert_eq!(properties["TimeToLiveSpecification"]["Enabled"], true);

    let policy = &template["Resources"]["FunctionReplayPolicy"];
    assert_eq!(policy["Condition"], "HasReplayGuard");
    let granted = statements(&policy["Properties"]["PolicyDocument"]);
    assert_eq!(granted.len(), 1);
    assert_eq!(granted[0].0, set(&["dynamodb:UpdateItem"]));

    let variable = tagged(environment(&template, "TOKEN_BROKER_REPLAY_TABLE"), "!If");
    assert_eq!(variable[0], "HasReplayGuard");
    assert_eq!(tagged(&variable[1], "!Ref"), "ReplayTable");
}

#[test]
fn alarms_watch_5xx_sts_kms_jwks_and_denials_and_notify_the_optional_topic() {
    let template = template();
    assert_eq!(template["Parameters"]["AlarmTopicArn"]["Default"], "");
    let namespace = tagged(
        environment(&template, "TOKEN_BROKER_METRICS_NAMESPACE"),
        "!Sub",
    );
    let alarms = resources_of_type(&template, "AWS::CloudWatch::Alarm");
    let mut watched = BTreeSet::new();
    for (name, alarm) in &alarms {
        let properties = &alarm["Properties"];
        let metric = properties["MetricName"].as_str().unwrap();
        watched.insert(metric.to_owned());
        if metric == "Url5xxCount" {
            assert_eq!(properties["Namespace"], "AWS/Lambda");
        } else {
            assert_eq!(
                tagged(&properties["Namespace"], "!Sub"),
                namespace,
                "{name}"
            );
        }
        assert_eq!(properties["TreatMissingData"], "notBreaching", "{name}");
        for actions in ["AlarmActions", "OKActions"] {
            let choice = tagged(&properties[actions], "!If");
            assert_eq!(choice[0], "HasAlarmTopic", "{name} {actions}");
            assert_eq!(tagged(&choice[1][0], "!Ref"), "AlarmTopicArn");
        }
    }
    assert_eq!(
        watched,
        set(&[
            "Url5xxCount",
            "StsErrors",
            "KmsErrors",
            "JwksFetchFailures",
            "Decisions"
        ])
    );
    let denials = &template["Resources"]["DeniedRequestsAlarm"]["Properties"];
    assert_eq!(denials["Dimensions"][0]["Name"], "Outcome");
    assert_eq!(denials["Dimensions"][0]["Value"], "deny");
    assert_eq!(
        tagged(&denials["Threshold"], "!Ref"),
        "DeniedRequestsAlarmThreshold"
    );
}

#[test]
fn the_dashboard_shows_decisions_by_outcome_latency_percentiles_and_errors() {
    let template = template();
    let body = tagged(
        &template["Resources"]["Dashboard"]["Properties"]["DashboardBody"],
        "!Sub",
    );
    let text = body[0]
        .as_str()
        .unwrap()
        .replace("${Namespace}", "TokenBroker/stack")
        .replace("${AWS::Region}", "eu-west-1")
        .replace("${BrokerFunction}", "stack");
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let metrics: Vec<String> = dashboard["widgets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|w| w["properties"]["metrics"].as_array().unwrap().clone())
        .map(|m| m.to_string())
        .collect();
    let shows = |needle: &str| metrics.iter().any(|m| m.contains(needle));
    for outcome in ["allow", "deny", "invalid_token", "error"] {
        assert!(shows(&format!(r#""Outcome","{outcome}""#)), "{outcome}");
    }
    for needle in [
        r#""stat":"p50""#,
        r#""stat":"p99""#,
        "Url5xxCount",
        "StsErrors",
        "KmsErrors",
        "JwksFetchFailures",
    ] {
        assert!(shows(needle), "{needle} in {metrics:?}");
    }
}

/// The review component's reports are where GitLab reads them, and kept when the job fails.
#[test]
fn merge_requests_show_lint_findings_case_results_and_the_access_delta() {
    let template = read("templates/policy-review.yml");
    let config: Value = serde_yaml::Deserializer::from_str(&template)
        .nth(1)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .unwrap();
    let review = &config["$[[ inputs.job_prefix ]]-review"]["artifacts"];
    assert_eq!(review["when"], "always");
    assert_eq!(
        review["reports"]["codequality"],
        "gl-code-quality-report.json"
    );
    assert_eq!(review["reports"]["junit"], "policy-tests.xml");
    let diff = &config["$[[ inputs.job_prefix ]]-diff"];
    assert_eq!(diff["artifacts"]["expose_as"], "policy access changes");
    assert_eq!(
        diff["rules"][0]["if"],
        "$CI_PIPELINE_SOURCE == \"merge_request_event\""
    );
}
