"""The thin Dagster layer: partitions, assets, IO managers, resources, sensors and jobs.

Assets call `quantlab_pipeline.core`; IO managers and the sensor call `quantlab_pipeline.storage`.
"""
