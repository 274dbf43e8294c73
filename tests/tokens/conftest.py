import os
import sys

# Spark's Python workers must run this venv's interpreter (pyarrow, tokenizers). resources/spark.py
# defaults PYSPARK_PYTHON to realpath(sys.executable), which resolves the venv symlink to the base
# interpreter without the venv's packages; conftest runs before the session fixture, so set it first.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
