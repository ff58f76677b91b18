"""Prepares a moto server for the workload-identity tests, then turns on its
IAM enforcement: every later call must be signed by a known principal and be
allowed by that principal's policies.

Usage: iam_setup.py <endpoint> <secret>=<json value> ...

Creates
- the IAM user "sm-injector" with no policy at all (sm-injector's own
  credentials in this mode need no Secrets Manager permission);
- the role "secret-reader", allowed secretsmanager:GetSecretValue and
  secretsmanager:BatchGetSecretValue;
- the role "no-secrets", allowed only sts:GetCallerIdentity;
- the IAM user "admin", allowed everything (the tests rotate secrets with it);
- each secret given;
and prints {"own": {...}, "admin": {"id": ..., "secret": ...}, "account": ...} as JSON.

moto checks Secrets Manager permissions per action only (its resource is
always "*"), so the roles differ by action, not by secret name.
"""

import json
import sys
import urllib.request

import boto3

endpoint = sys.argv[1]
secrets = [a.split("=", 1) for a in sys.argv[2:]]


def client(service):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
    )


iam = client("iam")
iam.create_user(UserName="sm-injector")
key = iam.create_access_key(UserName="sm-injector")["AccessKey"]

trust = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Federated": "arn:aws:iam::123456789012:oidc-provider/testbed"},
                "Action": "sts:AssumeRoleWithWebIdentity",
            }
        ],
    }
)


def role(name, actions):
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust)
    iam.put_role_policy(
        RoleName=name,
        PolicyName="reads",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
            }
        ),
    )


role(
    "secret-reader",
    ["secretsmanager:GetSecretValue", "secretsmanager:BatchGetSecretValue"],
)
role("no-secrets", ["sts:GetCallerIdentity"])

iam.create_user(UserName="admin")
iam.put_user_policy(
    UserName="admin",
    PolicyName="all",
    PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    ),
)
admin = iam.create_access_key(UserName="admin")["AccessKey"]

sm = client("secretsmanager")
for name, value in secrets:
    sm.create_secret(Name=name, SecretString=value)

account = client("sts").get_caller_identity()["Account"]

# From here on every call is authenticated and authorized.
urllib.request.urlopen(
    urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=b"0",
        method="POST",
        # Not a form: moto reads the raw body.
        headers={"Content-Type": "text/plain"},
    )
).read()

print(
    json.dumps(
        {
            "own": {"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]},
            "admin": {"id": admin["AccessKeyId"], "secret": admin["SecretAccessKey"]},
            "account": account,
        }
    )
)
