#!/usr/bin/env bash
# obslake Data Fabric connector 'demo_traces': give the Airflow workers' role write access to
# s3://obslake-demo/fabric/ml-platform/ and tag the bucket with the connector's ingestion key.
# Run with AWS credentials that may tag the bucket and edit the role; needs the aws and airflow CLIs.
# Run it in the folder that holds s3-writer-policy.json (obslake fabric setup demo_traces --write DIR).
set -euo pipefail
KEY=$(airflow variables get obslake_demo_ingestion_key)
# put-bucket-tagging REPLACES the bucket's tag set: add its other tags (aws s3api get-bucket-tagging
# --bucket obslake-demo) to the TagSet below before running it on a bucket that has tags.
aws s3api put-bucket-tagging --bucket obslake-demo \
  --tagging "TagSet=[{Key=arize-ingestion-key,Value=$KEY}]"
aws iam put-role-policy --role-name obslake-fabric-writer --policy-name obslake-fabric-demo_traces \
  --policy-document file://s3-writer-policy.json
