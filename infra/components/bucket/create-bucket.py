import os, sys, boto3, botocore.exceptions as be
bucket, region = os.environ["UFT_BUCKET"], os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
s3 = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None, region_name=region)
try:
    s3.head_bucket(Bucket=bucket)
    print(f"bucket {bucket} exists"); sys.exit(0)
except be.ClientError as e:
    code = e.response["Error"]["Code"]
    if code not in ("404", "NoSuchBucket", "NotFound"):
        sys.exit(f"bucket {bucket}: HEAD answered {code}: it exists but Secret uft-s3-admin may not use it (another owner, or wrong keys)")
kw = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
s3.create_bucket(Bucket=bucket, **kw)
print(f"bucket {bucket} created in {region}")
