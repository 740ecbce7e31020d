#!/usr/bin/env python3
"""Prepares a running moto server for the AssumeRole interop test.

While moto still accepts unauthenticated calls: creates an IAM user with an
access key and a role it may assume (both with an allow-all policy, since moto
checks IAM policies once auth is on), then turns signature checking on with
POST /moto-api/reset-auth. Prints {"access_key_id", "secret_access_key",
"role_arn"} as JSON.

Usage: moto_setup.py ENDPOINT
"""
import json
import sys
import urllib.error
import urllib.request

import botocore.session

ALLOW_ALL = json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
})
TRUST = json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}],
})


def enable_auth(endpoint):
    """moto 5 takes the number of unauthenticated requests still allowed as a
    bare number; some versions take JSON. Try both."""
    url = endpoint.rstrip("/") + "/moto-api/reset-auth"
    bodies = [b"0", json.dumps({"allowed_nr_of_unauthenticated_requests": 0}).encode()]
    for body in bodies:
        req = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "text/plain"})
        try:
            urllib.request.urlopen(req).read()
            return
        except urllib.error.HTTPError as err:
            last = err
    raise SystemExit(f"cannot enable moto auth checking: {last}")


def main(endpoint):
    session = botocore.session.get_session()
    iam = session.create_client(
        "iam", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="setup", aws_secret_access_key="setup")
    iam.create_user(UserName="edgenet-node")
    iam.put_user_policy(UserName="edgenet-node", PolicyName="all", PolicyDocument=ALLOW_ALL)
    key = iam.create_access_key(UserName="edgenet-node")["AccessKey"]
    role = iam.create_role(RoleName="edgenet-node", AssumeRolePolicyDocument=TRUST)["Role"]
    iam.put_role_policy(RoleName="edgenet-node", PolicyName="all", PolicyDocument=ALLOW_ALL)
    enable_auth(endpoint)
    json.dump({
        "access_key_id": key["AccessKeyId"],
        "secret_access_key": key["SecretAccessKey"],
        "role_arn": role["Arn"],
    }, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
