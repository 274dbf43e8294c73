"""Container health check: exit 0 when the model server on $LLMOPS_PORT answers GET /health with 200."""

import os
import sys
import urllib.request

url = f"http://127.0.0.1:{os.environ.get('LLMOPS_PORT', '8000')}/health"
try:
    with urllib.request.urlopen(url, timeout=4) as resp:
        sys.exit(0 if resp.status == 200 else 1)
except OSError as e:
    print(f"healthcheck: {url}: {e}", file=sys.stderr)
    sys.exit(1)
