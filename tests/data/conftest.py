import os
import sys

# Spark's Python workers run the pandas UDFs of llm_assets.data and need this venv's packages.
# resources/spark.py defaults PYSPARK_PYTHON to realpath(sys.executable), which resolves the venv's
# symlink to the base interpreter; conftest runs before the session fixture, so set it first.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
