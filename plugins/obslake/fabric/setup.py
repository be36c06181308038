"""Set-up templates for a connector's writer role: what the customer's cloud admin runs once.

Data Fabric writes into the customer's bucket, so the identity the Airflow workers run as needs write
access there, and the bucket must carry the ownership tag (S3) or label (GCS) whose value is the
connector's ingestion key (the sync refuses to write otherwise). :func:`writer_setup` renders, with the
connector's real bucket, prefix, namespace and tag name filled in:

* **S3**: the IAM policy JSON (``s3:GetObject``, ``s3:PutObject``, ``s3:DeleteObject`` and
  ``s3:AbortMultipartUpload`` on ``<prefix>/<namespace>/*``; ``s3:ListBucket`` limited to that
  prefix; ``s3:GetBucketLocation`` and ``s3:GetBucketTagging`` on the bucket), the ``aws`` CLI
  commands (tag the bucket, ``put-role-policy``), and the same as Terraform.
* **GCS**: the custom role (``storage.buckets.get``, ``storage.objects.get/list/create/update/delete``)
  as the YAML ``gcloud iam roles create --file`` reads, the ``gcloud`` commands (create the role, bind it
  on the bucket, set the label), and the same as Terraform.

Only the ingestion key itself is never printed: the commands read it from the Airflow Variable the
connector names (``airflow variables get <ingestion_key_variable>``), and Terraform takes it as a
sensitive variable. ``obslake fabric setup CONNECTOR`` prints these; ``--write DIR`` writes them as
files (``include/setup/<connector>/`` holds them for the example connector).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from obslake.config import Connector
from obslake.exceptions import ConfigError
from obslake.storage.base import parse_uri

DEFAULT_ROLE = "obslake-fabric-writer"
DEFAULT_GCP_ROLE_ID = "obslakeFabricWriter"
S3_OBJECT_ACTIONS = ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload")
S3_BUCKET_ACTIONS = ("s3:GetBucketLocation", "s3:GetBucketTagging")
GCS_PERMISSIONS = (
    "storage.buckets.get",
    "storage.objects.get",
    "storage.objects.list",
    "storage.objects.create",
    "storage.objects.update",
    "storage.objects.delete",
)


@dataclass(frozen=True)
class SetupFile:
    """One rendered template: ``name`` is its file name, ``title`` what it is for."""

    name: str
    title: str
    text: str


@dataclass(frozen=True)
class _Names:
    bucket: str
    root: str  # <prefix>/<namespace>, no leading or trailing slash
    tag: str
    variable: str
    connector: str


def _names(conn: Connector, storage: str | None) -> tuple[str, _Names]:
    uri = parse_uri(f"{(storage or conn.storage).rstrip('/')}/{conn.namespace}/")
    if uri.scheme not in ("s3", "gs"):
        raise ConfigError(
            f"connector {conn.name!r} writes to {uri.scheme}:// storage, which needs no cloud access set-up; "
            f"pass --storage s3://BUCKET/PREFIX or gs://BUCKET/PREFIX to render it for a bucket"
        )
    return uri.scheme, _Names(uri.bucket, uri.prefix.strip("/"), conn.tag_name, conn.ingestion_key_variable, conn.name)


def writer_setup(
    conn: Connector,
    *,
    role: str = DEFAULT_ROLE,
    gcp_project: str = "<gcp_project>",
    service_account: str | None = None,
    storage: str | None = None,
) -> list[SetupFile]:
    """The set-up files for ``conn``'s bucket (``storage`` renders them for another bucket/prefix instead).

    ``role`` is the AWS IAM role the Airflow workers run as; ``gcp_project`` and ``service_account`` name
    the GCP project that gets the custom role and the workers' service account (default
    ``<role>@<gcp_project>.iam.gserviceaccount.com``).

    Raises:
        ConfigError: the connector writes to ``file://`` storage and no ``storage`` was given.
    """
    scheme, n = _names(conn, storage)
    if scheme == "s3":
        return _s3(n, role)
    return _gcs(n, gcp_project, service_account or f"{role}@{gcp_project}.iam.gserviceaccount.com")


def s3_policy(bucket: str, root: str) -> dict:
    """The least-privilege writer policy for ``s3://<bucket>/<root>/``."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ObslakeFabricBucket",
                "Effect": "Allow",
                "Action": list(S3_BUCKET_ACTIONS),
                "Resource": f"arn:aws:s3:::{bucket}",
            },
            {
                "Sid": "ObslakeFabricList",
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": f"arn:aws:s3:::{bucket}",
                "Condition": {"StringLike": {"s3:prefix": [root, f"{root}/*"]}},
            },
            {
                "Sid": "ObslakeFabricObjects",
                "Effect": "Allow",
                "Action": list(S3_OBJECT_ACTIONS),
                "Resource": f"arn:aws:s3:::{bucket}/{root}/*",
            },
        ],
    }


def _s3(n: _Names, role: str) -> list[SetupFile]:
    policy = json.dumps(s3_policy(n.bucket, n.root), indent=2) + "\n"
    policy_name = f"obslake-fabric-{n.connector}"
    cli = f"""#!/usr/bin/env bash
# obslake Data Fabric connector {n.connector!r}: give the Airflow workers' role write access to
# s3://{n.bucket}/{n.root}/ and tag the bucket with the connector's ingestion key.
# Run with AWS credentials that may tag the bucket and edit the role; needs the aws and airflow CLIs.
# Run it in the folder that holds s3-writer-policy.json (obslake fabric setup {n.connector} --write DIR).
set -euo pipefail
KEY=$(airflow variables get {n.variable})
# put-bucket-tagging REPLACES the bucket's tag set: add its other tags (aws s3api get-bucket-tagging
# --bucket {n.bucket}) to the TagSet below before running it on a bucket that has tags.
aws s3api put-bucket-tagging --bucket {n.bucket} \\
  --tagging "TagSet=[{{Key={n.tag},Value=$KEY}}]"
aws iam put-role-policy --role-name {role} --policy-name {policy_name} \\
  --policy-document file://s3-writer-policy.json
"""
    statements = []
    for st in s3_policy(n.bucket, n.root)["Statement"]:
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        lines = [
            "  statement {",
            f'    sid       = "{st["Sid"]}"',
            f"    actions   = {json.dumps(actions)}",
            f"    resources = {json.dumps([st['Resource']])}",
        ]
        for test, conds in st.get("Condition", {}).items():
            for variable, values in conds.items():
                lines += [
                    "    condition {",
                    f'      test     = "{test}"',
                    f'      variable = "{variable}"',
                    f"      values   = {json.dumps(values)}",
                    "    }",
                ]
        statements.append("\n".join([*lines, "  }"]))
    body = "\n".join(statements)
    tf = f"""# obslake Data Fabric connector {n.connector!r}: writer access to s3://{n.bucket}/{n.root}/ for the
# Airflow workers' role, and the ownership tag on the bucket.
# The bucket already exists: import it first (terraform import aws_s3_bucket.fabric {n.bucket}) and
# keep its other settings and tags in this resource.
variable "ingestion_key" {{
  type        = string
  sensitive   = true
  description = "the value of the Airflow Variable {n.variable}"
}}

resource "aws_s3_bucket" "fabric" {{
  bucket = "{n.bucket}"
  tags = {{
    "{n.tag}" = var.ingestion_key
  }}
}}

data "aws_iam_policy_document" "obslake_fabric_writer" {{
{body}
}}

resource "aws_iam_role_policy" "obslake_fabric_writer" {{
  name   = "{policy_name}"
  role   = "{role}"
  policy = data.aws_iam_policy_document.obslake_fabric_writer.json
}}
"""
    return [
        SetupFile("s3-writer-policy.json", f"IAM policy for role {role} (s3://{n.bucket}/{n.root}/)", policy),
        SetupFile("s3-writer.sh", "aws CLI: tag the bucket, attach the policy to the role", cli),
        SetupFile("s3-writer.tf", "Terraform: the same", tf),
    ]


def _gcs(n: _Names, project: str, service_account: str) -> list[SetupFile]:
    role_id = DEFAULT_GCP_ROLE_ID
    role_yaml = (
        f"# gcloud iam roles create {role_id} --project={project} --file=gcs-writer-role.yaml\n"
        f"title: obslake Data Fabric writer\n"
        f"description: Writes obslake Data Fabric exports (Iceberg, Delta) into a bucket\n"
        f"stage: GA\n"
        f"includedPermissions:\n" + "".join(f"- {p}\n" for p in GCS_PERMISSIONS)
    )
    cli = f"""#!/usr/bin/env bash
# obslake Data Fabric connector {n.connector!r}: give the Airflow workers' service account write access
# to gs://{n.bucket}/ (exports go to gs://{n.bucket}/{n.root}/) and label the bucket with the
# connector's ingestion key. Needs the gcloud and airflow CLIs.
set -euo pipefail
KEY=$(airflow variables get {n.variable})
gcloud iam roles create {role_id} --project={project} \\
  --title="obslake Data Fabric writer" \\
  --permissions={",".join(GCS_PERMISSIONS)}
gcloud storage buckets add-iam-policy-binding gs://{n.bucket} \\
  --member=serviceAccount:{service_account} \\
  --role=projects/{project}/roles/{role_id}
gcloud storage buckets update gs://{n.bucket} --update-labels={n.tag}="$KEY"
"""
    tf = f"""# obslake Data Fabric connector {n.connector!r}: writer access to gs://{n.bucket}/ (exports under
# {n.root}/) for the Airflow workers' service account, and the ownership label on the bucket.
# The bucket already exists: import it first (terraform import google_storage_bucket.fabric {n.bucket})
# and keep its other settings and labels in this resource.
variable "ingestion_key" {{
  type        = string
  sensitive   = true
  description = "the value of the Airflow Variable {n.variable}"
}}

variable "bucket_location" {{
  type        = string
  description = "the bucket's location: gcloud storage buckets describe gs://{n.bucket} --format='value(location)'"
}}

resource "google_project_iam_custom_role" "obslake_fabric_writer" {{
  project     = "{project}"
  role_id     = "{role_id}"
  title       = "obslake Data Fabric writer"
  permissions = {json.dumps(list(GCS_PERMISSIONS))}
}}

resource "google_storage_bucket" "fabric" {{
  name     = "{n.bucket}"
  location = var.bucket_location
  labels = {{
    "{n.tag}" = var.ingestion_key
  }}
}}

resource "google_storage_bucket_iam_member" "obslake_fabric_writer" {{
  bucket = google_storage_bucket.fabric.name
  role   = google_project_iam_custom_role.obslake_fabric_writer.name
  member = "serviceAccount:{service_account}"
}}
"""
    return [
        SetupFile("gcs-writer-role.yaml", f"GCS custom role {role_id} (gcloud iam roles create --file)", role_yaml),
        SetupFile("gcs-writer.sh", "gcloud: create the role, bind it on the bucket, label the bucket", cli),
        SetupFile("gcs-writer.tf", "Terraform: the same", tf),
    ]
