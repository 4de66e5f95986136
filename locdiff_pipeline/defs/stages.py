"""The graph's names in one place: its stages (the assets' groups), its jobs and its code location.

Kept free of Dagster so that `locdiff dev`'s guard, which imports no Dagster, can name them too: it opens a
first visit's lineage and job graphs with every stage expanded (ui_pages.py).
"""

INGEST = "ingest"
FEATURES = "features"
MODEL = "model"
EVALUATION = "evaluation"
GROUPS = (INGEST, FEATURES, MODEL, EVALUATION)  # in the graph's order

TRAIN_JOB = "locdiff_train"
EVALUATE_JOB = "locdiff_evaluate"
JOBS = (TRAIN_JOB, EVALUATE_JOB)

# The code location `dagster dev -m locdiff_pipeline.definitions` (and workspace.yaml) serves, as Dagster
# labels its runs: a job's page lists the runs of that job carrying this label.
REPOSITORY = "__repository__"
LOCATION = "locdiff_pipeline.definitions"
CODE_LOCATION_LABEL = f"{REPOSITORY}@{LOCATION}"
