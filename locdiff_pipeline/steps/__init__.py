"""The work behind each Dagster asset, one module per asset (Dagster-free, so tests and notebooks call
it directly): image_embeddings, shdd_tables, locdiff_model, predictions, accuracy_report."""
