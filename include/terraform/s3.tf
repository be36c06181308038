# Tag an inference bucket for obslake and give the Airflow worker role read-only access.
variable "ingestion_key" {
  type      = string
  sensitive = true
}

variable "airflow_worker_role_arn" {
  type = string
}

resource "aws_s3_bucket" "inference" {
  bucket = "my-inference-bucket"
  tags = {
    arize-ingestion-key = var.ingestion_key
  }
}

data "aws_iam_policy_document" "obslake_read_only" {
  statement {
    principals {
      type        = "AWS"
      identifiers = [var.airflow_worker_role_arn]
    }
    actions   = ["s3:ListBucket", "s3:GetBucketTagging", "s3:GetBucketLocation"]
    resources = [aws_s3_bucket.inference.arn]
  }
  statement {
    principals {
      type        = "AWS"
      identifiers = [var.airflow_worker_role_arn]
    }
    actions   = ["s3:GetObject", "s3:GetObjectVersion"]
    resources = ["${aws_s3_bucket.inference.arn}/*"]
  }
}

resource "aws_s3_bucket_policy" "obslake_read_only" {
  bucket = aws_s3_bucket.inference.id
  policy = data.aws_iam_policy_document.obslake_read_only.json
}
