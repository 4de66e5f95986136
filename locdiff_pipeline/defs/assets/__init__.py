"""Assets by stage; each module's assets share one group_name, so the Dagster UI shows the stages."""
