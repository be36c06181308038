# obslake Data Fabric connector 'demo_traces': writer access to gs://obslake-demo/ (exports under
# fabric/ml-platform/) for the Airflow workers' service account, and the ownership label on the bucket.
# The bucket already exists: import it first (terraform import google_storage_bucket.fabric obslake-demo)
# and keep its other settings and labels in this resource.
variable "ingestion_key" {
  type        = string
  sensitive   = true
  description = "the value of the Airflow Variable obslake_demo_ingestion_key"
}

variable "bucket_location" {
  type        = string
  description = "the bucket's location: gcloud storage buckets describe gs://obslake-demo --format='value(location)'"
}

resource "google_project_iam_custom_role" "obslake_fabric_writer" {
  project     = "<gcp_project>"
  role_id     = "obslakeFabricWriter"
  title       = "obslake Data Fabric writer"
  permissions = ["storage.buckets.get", "storage.objects.get", "storage.objects.list", "storage.objects.create", "storage.objects.update", "storage.objects.delete"]
}

resource "google_storage_bucket" "fabric" {
  name     = "obslake-demo"
  location = var.bucket_location
  labels = {
    "arize-ingestion-key" = var.ingestion_key
  }
}

resource "google_storage_bucket_iam_member" "obslake_fabric_writer" {
  bucket = google_storage_bucket.fabric.name
  role   = google_project_iam_custom_role.obslake_fabric_writer.name
  member = "serviceAccount:obslake-fabric-writer@<gcp_project>.iam.gserviceaccount.com"
}
