#!/usr/bin/env python3
"""Deploy-time properties of template.yaml, checked on the template CloudFormation would really
receive: the SAM transform is run offline (aws-sam-translator, as `sam deploy` runs it) and the
resulting resources are inspected. Each check is a way a deploy once would have failed or
misbehaved on AWS while every local test passed.

    python3 scripts/check-template.py [template.yaml]     exit 1 and one line per finding
"""
import json
import os
import sys

from cfnlint.decode import decode_str
from samtranslator.translator.transform import transform

os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
path = sys.argv[1] if len(sys.argv) > 1 else "template.yaml"
template, errors = decode_str(open(path).read())
if errors:
    sys.exit(f"{path}: {errors}")
template = json.loads(json.dumps(template, default=str))
for res in template["Resources"].values():
    if res["Type"] == "AWS::Serverless::Function":
        res["Properties"]["CodeUri"] = "s3://bucket/key"  # sam build/package fills this in


class NoManagedPolicies:
    def load(self):
        return {}


out = transform(template, {}, NoManagedPolicies())
resources = out["Resources"]
findings = []


def of_type(kind):
    return {k: v for k, v in resources.items() if v["Type"] == kind}


def refs(value):
    return json.dumps(value)


# A second stack (staging, a pull request) in the same account and region must be creatable:
# no physical name may be fixed, every one must contain the stack name.
NAMED = {
    "AWS::Scheduler::Schedule": "Name",
    "AWS::Lambda::Function": "FunctionName",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::DynamoDB::Table": "TableName",
    "AWS::SQS::Queue": "QueueName",
    "AWS::SNS::Topic": "TopicName",
    "AWS::Cognito::UserPool": "UserPoolName",
}
for kind, prop in NAMED.items():
    for name, res in of_type(kind).items():
        value = res["Properties"].get(prop)
        if value is not None and "AWS::StackName" not in refs(value):
            findings.append(f"{name}: {prop} {refs(value)} is fixed; a second stack could not be created")
if not of_type("AWS::Scheduler::Schedule"):
    findings.append("no schedule for the batcher")

# Every function logs to a log group the stack owns, with retention.
for name, fn in of_type("AWS::Lambda::Function").items():
    logging = fn["Properties"].get("LoggingConfig", {})
    group = logging.get("LogGroup", {}).get("Ref")
    if not group or resources.get(group, {}).get("Type") != "AWS::Logs::LogGroup":
        findings.append(f"{name}: logs to an implicit log group (never expires, outlives the stack)")
    elif "RetentionInDays" not in resources[group]["Properties"]:
        findings.append(f"{group}: no retention")
    if logging.get("LogFormat") != "JSON":
        findings.append(f"{name}: logs are not JSON")
    env = refs(fn["Properties"].get("Environment", {}))
    for local_only in ("LOCAL_AUTH_SECRET", "CALL_LOG_DIR", "AWS_ENDPOINT_URL"):
        if local_only in env:
            findings.append(f"{name}: sets the local-only {local_only}")

# No secret in a function's configuration: a NoEcho parameter reaches a function only through a
# Secrets Manager secret (its ARN), never as an environment variable's value.
no_echo = {k for k, v in template.get("Parameters", {}).items() if v.get("NoEcho")}
for name, fn in of_type("AWS::Lambda::Function").items():
    env = fn["Properties"].get("Environment", {}).get("Variables", {})
    for var, value in env.items():
        if any(f'"Ref": "{p}"' in refs(value) for p in no_echo):
            findings.append(f"{name}: {var} carries the secret parameter itself (readable by lambda:GetFunctionConfiguration)")
    role = resources.get(fn["Properties"].get("Role", {}).get("Fn::GetAtt", [""])[0], {})
    for var, value in env.items():
        if isinstance(value, dict) and resources.get(value.get("Ref", ""), {}).get("Type") == "AWS::SecretsManager::Secret":
            if f'"Ref": "{value["Ref"]}"' not in refs(role.get("Properties", {}).get("Policies", [])):
                findings.append(f"{name}: may not read {value['Ref']} ({var})")

# CloudWatch can publish only to a topic whose key policy grants it: never alias/aws/sns.
for name, topic in of_type("AWS::SNS::Topic").items():
    key = topic["Properties"].get("KmsMasterKeyId")
    if key is None:
        continue
    if "alias/aws/sns" in refs(key):
        findings.append(f"{name}: encrypted with alias/aws/sns, which CloudWatch alarms cannot use")
        continue
    key_res = resources.get(key.get("Ref", "") if isinstance(key, dict) else "", {})
    policy = refs(key_res.get("Properties", {}).get("KeyPolicy", {}))
    if "cloudwatch.amazonaws.com" not in policy:
        findings.append(f"{name}: its KMS key's policy does not let CloudWatch use it")

# The schedule retries a failed run itself; Lambda's async retries would add overlapping runs.
batcher = [k for k, v in of_type("AWS::Lambda::Function").items() if "payout-batcher" in refs(v["Properties"].get("FunctionName"))]
invoke_configs = {refs(v["Properties"]["FunctionName"]): v for v in of_type("AWS::Lambda::EventInvokeConfig").values()}
for fn in batcher:
    cfg = invoke_configs.get(refs({"Ref": fn}))
    if not cfg or cfg["Properties"].get("MaximumRetryAttempts") != 0:
        findings.append(f"{fn}: asynchronous invocations are retried by Lambda (set MaximumRetryAttempts: 0)")

# The provider's callbacks are throttled apart from the user routes.
for name, stage in of_type("AWS::ApiGatewayV2::Stage").items():
    if "POST /webhooks/provider" not in stage["Properties"].get("RouteSettings", {}):
        findings.append(f"{name}: the webhook shares the user routes' throttle")

# Who may call each route, as API Gateway will enforce it: the internal API only with SigV4
# (AWS_IAM), the webhook with no authorizer (its HMAC), every user route with the JWT authorizer.
for name, api in of_type("AWS::ApiGatewayV2::Api").items():
    for route, methods in api["Properties"].get("Body", {}).get("paths", {}).items():
        for method, op in methods.items():
            schemes = sorted(k for sec in op.get("security", []) for k in sec)
            if route.startswith("/internal/"):
                wanted = ["AWS_IAM"]
            elif route == "/webhooks/provider":
                wanted = ["NONE"]
            else:
                wanted = ["JwtAuthorizer"]
            if schemes != wanted:
                findings.append(f"{name}: {method.upper()} {route} is authorized by {schemes}, not {wanted}")

# InternalCallerArns: the parameter's AllowedPattern must refuse what the function's parser
# (shared::auth::AllowedCallers) refuses, or a deploy succeeds and every cold start of the request
# function fails; and accept what it accepts.
import re
pattern = re.compile(template["Parameters"]["InternalCallerArns"]["AllowedPattern"])
for value, ok in [("", True), ("arn:aws:iam::123456789012:role/deposit-service", True),
                  ("arn:aws:iam::123456789012:role/payments/deposit-service,arn:aws:iam::123456789012:user/ops", True),
                  ("arn:aws-cn:iam::123456789012:role/x", True),
                  ("arn:aws:iam::123456789012:role/deposit-service/", False),
                  ("arn:aws:iam::123456789012:role//x", False), ("arn:aws:iam::123456789012:role/", False),
                  ("arn:aws:iam::1234:role/x", False), ("arn:aws:sts::123456789012:assumed-role/x/s", False),
                  ("arn:aws:iam::123456789012:group/x", False), ("deposit-service", False),
                  ("arn:aws:iam::123456789012:role/a b", False)]:
    if bool(pattern.fullmatch(value)) != ok:
        findings.append(f"InternalCallerArns: AllowedPattern {'refuses' if ok else 'accepts'} {value!r}")

# Events out: the stream mapping reports per-record failures (else one bad record blocks or
# loses a batch), bisects, ends in an on-failure queue that is alarmed, and filters to the items
# that make events; the publisher's role reads this stream and puts on this bus, nothing wider.
mappings = of_type("AWS::Lambda::EventSourceMapping")
publisher = [k for k, v in of_type("AWS::Lambda::Function").items() if "event-publisher" in refs(v["Properties"].get("FunctionName"))]
if len(publisher) != 1 or len(mappings) != 1:
    findings.append(f"expected one event-publisher and one stream mapping, found {publisher} / {list(mappings)}")
else:
    fn = publisher[0]
    m = next(iter(mappings.values()))["Properties"]
    if m.get("FunctionResponseTypes") != ["ReportBatchItemFailures"]:
        findings.append("stream mapping: without ReportBatchItemFailures a partial failure re-sends or loses the batch")
    if m.get("MaximumRetryAttempts") != -1 or m.get("MaximumRecordAgeInSeconds") != -1:
        findings.append("stream mapping: retries must last as long as the stream keeps the record (an outage must not use them up)")
    at_risk = [a for a in of_type("AWS::CloudWatch::Alarm").values()
               if a["Properties"].get("MetricName") == "IteratorAge"
               and a["Properties"].get("Threshold", 0) * a["Properties"].get("EvaluationPeriods", 1) <= 12 * 3600 * 1000]
    if not at_risk:
        findings.append("stream mapping: no iterator-age alarm well before the stream's 24 h retention")
    if m.get("BisectBatchOnFunctionError") is not True:
        findings.append("stream mapping: no bisect on error")
    if "StreamArn" not in refs(m.get("EventSourceArn")):
        findings.append("stream mapping: not on the table's stream")
    dest = m.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination", {})
    dlq = dest.get("Fn::GetAtt", [""])[0] if isinstance(dest, dict) else ""
    if resources.get(dlq, {}).get("Type") != "AWS::SQS::Queue":
        findings.append("stream mapping: no SQS on-failure destination")
    elif not any(f'"{dlq}"' in refs(a["Properties"].get("Dimensions", [])) for a in of_type("AWS::CloudWatch::Alarm").values()):
        findings.append(f"{dlq}: the on-failure queue has no alarm")
    patterns = [json.loads(f["Pattern"]) for f in m.get("FilterCriteria", {}).get("Filters", [])]
    if patterns != [{"dynamodb": {"NewImage": {"type": {"S": ["WITHDRAWAL", "CREDIT", "CONTROL", "BENEFICIARY"]}}}}]:
        findings.append(f"stream mapping: filter {patterns} is not withdrawal, credit, switch and beneficiary items")
    role = resources[resources[fn]["Properties"]["Role"]["Fn::GetAtt"][0]]["Properties"]
    managed = refs(role.get("ManagedPolicyArns", []))
    if "DynamoDBExecutionRole" in managed or "AWSLambdaInvocation" in managed:
        findings.append(f"{fn}: a managed stream policy grants reads on every stream")
    for policy in role.get("Policies", []):
        for st in policy["PolicyDocument"]["Statement"]:
            actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            where = refs(st["Resource"])
            for a in actions:
                if a.startswith("events:") and "EventBus" not in where:
                    findings.append(f"{fn}: {a} on {where}, not the stack's bus")
                # ListStreams has no resource-level permission: "*" is its only form.
                if a == "dynamodb:ListStreams" and where == '"*"':
                    continue
                # The one table read: an operator's skip marker, by its key prefix alone.
                if a == "dynamodb:GetItem" and "STREAMSKIP#" in refs(st.get("Condition", {})):
                    continue
                if a.startswith("dynamodb:") and "StreamArn" not in where:
                    findings.append(f"{fn}: {a} on {where}, not the table's stream")

# Every function's Errors, the API's 5xx and the money alarms exist.
alarm_metrics = {(a["Properties"].get("MetricName"), refs(a["Properties"].get("Dimensions", []))) for a in of_type("AWS::CloudWatch::Alarm").values()}
alarmed_functions = {d for m, d in alarm_metrics if m == "Errors"}
for fn in of_type("AWS::Lambda::Function"):
    if not any(f'"Ref": "{fn}"' in d for d in alarmed_functions):
        findings.append(f"{fn}: no alarm on its AWS/Lambda Errors")
for metric in ("5xx", "WebhookConflicts", "WebhookUnknownWithdrawal", "BatchesFlagged", "BatchesNeedingOperator", "IteratorAge", "UnreadableStreamRecords"):
    if not any(m == metric for m, _ in alarm_metrics):
        findings.append(f"no alarm on {metric}")

outputs = set(out.get("Outputs", {}))
for wanted in ("ApiUrl", "WebhookUrl", "TableName", "AlarmTopicArn", "ScheduleDeadLetterQueueUrl",
               "WithdrawalRequestFunctionName", "PayoutBatcherFunctionName", "ProviderWebhookFunctionName",
               "EventPublisherFunctionName", "EventBusName", "EventDeadLetterQueueUrl"):
    if wanted not in outputs:
        findings.append(f"output {wanted} missing")

for f in findings:
    print(f"template: {f}")
print(f"{path}: {len(resources)} resources after the SAM transform, {len(findings)} finding(s)")
sys.exit(1 if findings else 0)
