//! The deployment files keep their security properties: a later edit of template.yaml that opens
//! another route, widens an IAM grant or changes the key fails here, not in an audit.

use std::collections::BTreeSet;
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

/// Every statement of a policy document as (actions, resource).
fn statements(document: &Value) -> Vec<(BTreeSet<String>, Value)> {
    document["Statement"]
        .as_sequence()
        .unwrap()
        .iter()
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
    assert_eq!(grants.len(), 4, "{grants:?}");
    let find = |actions: &[&str]| {
        grants
            .iter()
            .find(|(a, _)| *a == set(actions))
            .unwrap_or_else(|| panic!("{actions:?}"))
            .1
            .clone()
    };
    assert_eq!(
        tagged(
            &find(&["logs:CreateLogStream", "logs:PutLogEvents"]),
            "!GetAtt"
        ),
        "LogGroup.Arn"
    );
    assert_eq!(
        tagged(
            &find(&["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"]),
            "!Ref"
        ),
        "AssumableRoleArns"
    );
    assert_eq!(
        tagged(&find(&["kms:Sign", "kms:GetPublicKey"]), "!GetAtt"),
        "SigningKey.Arn"
    );
    assert_eq!(
        tagged(&find(&["dynamodb:UpdateItem"]), "!GetAtt"),
        "ReplayTable.Arn"
    );
}

#[test]
fn the_assumable_roles_parameter_cannot_be_a_bare_wildcard() {
    let template = template();
    let parameter = &template["Parameters"]["AssumableRoleArns"];
    let pattern = regex::Regex::new(parameter["AllowedPattern"].as_str().unwrap()).unwrap();
    assert!(pattern.is_match(parameter["Default"].as_str().unwrap()));
    assert!(pattern.is_match("arn:aws:iam::123456789012:role/ci-deploy"));
    for wide in ["*", "arn:aws:iam::*:*", "arn:aws:iam::123456789012:user/x"] {
        assert!(!pattern.is_match(wide), "{wide}");
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
