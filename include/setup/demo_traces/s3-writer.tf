# obslake Data Fabric connector 'demo_traces': writer access to s3://obslake-demo/fabric/ml-platform/ for the
# Airflow workers' role, and the ownership tag on the bucket.
# The bucket already exists: import it first (terraform import aws_s3_bucket.fabric obslake-demo) and
# keep its other settings and tags in this resource.
variable "ingestion_key" {
  type        = string
  sensitive   = true
  description = "the value of the Airflow Variable obslake_demo_ingestion_key"
}

resource "aws_s3_bucket" "fabric" {
  bucket = "obslake-demo"
  tags = {
    "arize-ingestion-key" = var.ingestion_key
  }
}

data "aws_iam_policy_document" "obslake_fabric_writer" {
  statement {
    sid       = "ObslakeFabricBucket"
    actions   = ["s3:GetBucketLocation", "s3:GetBucketTagging"]
    resources = ["arn:aws:s3:::obslake-demo"]
  }
  statement {
    sid       = "ObslakeFabricList"
    actions   = ["s3:ListBucket"]
    resources = ["arn:aws:s3:::obslake-demo"]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["fabric/ml-platform", "fabric/ml-platform/*"]
    }
  }
  statement {
    sid       = "ObslakeFabricObjects"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
    resources = ["arn:aws:s3:::obslake-demo/fabric/ml-platform/*"]
  }
}

resource "aws_iam_role_policy" "obslake_fabric_writer" {
  name   = "obslake-fabric-demo_traces"
  role   = "obslake-fabric-writer"
  policy = data.aws_iam_policy_document.obslake_fabric_writer.json
}
