#!/usr/bin/env bash
# obslake Data Fabric connector 'demo_traces': give the Airflow workers' service account write access
# to gs://obslake-demo/ (exports go to gs://obslake-demo/fabric/ml-platform/) and label the bucket with the
# connector's ingestion key. Needs the gcloud and airflow CLIs.
set -euo pipefail
KEY=$(airflow variables get obslake_demo_ingestion_key)
gcloud iam roles create obslakeFabricWriter --project=<gcp_project> \
  --title="obslake Data Fabric writer" \
  --permissions=storage.buckets.get,storage.objects.get,storage.objects.list,storage.objects.create,storage.objects.update,storage.objects.delete
gcloud storage buckets add-iam-policy-binding gs://obslake-demo \
  --member=serviceAccount:obslake-fabric-writer@<gcp_project>.iam.gserviceaccount.com \
  --role=projects/<gcp_project>/roles/obslakeFabricWriter
gcloud storage buckets update gs://obslake-demo --update-labels=arize-ingestion-key="$KEY"
